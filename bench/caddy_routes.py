"""How long publishing one instance takes when N instances are already routed (not a test).

For N in 10, 100, 500 it starts its own Caddy on loopback (admin and listener on free 127.0.0.1
ports), routes N instances, then compares, as medians over several runs:

- floor: one raw admin request carrying the same route (POST .../routes), nothing else;
- apply: ``apply_instance`` (GET /config/apps with ETag, plan, one If-Match write, under the flock);
- publish: ``publish`` (the same plus the snippet, validated with /adapt), what `create` runs;
- snippet+reload: ``write_snippet`` (validated with /adapt) plus ``caddy reload``.

Target: apply within 1.5x the floor.

    .venv/bin/python bench/caddy_routes.py [--sizes 10,100,500] [--runs 7]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bcrypt
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller.caddy import (  # noqa: E402
    CaddyConfig,
    SiteSpec,
    apply_instance,
    publish,
    remove_instance,
    remove_snippet,
    unpublish,
    write_snippet,
)
from controller.caddy.admin import AdminClient  # noqa: E402
from controller.caddy.routes import plan, render_route  # noqa: E402
from tests.world.caddy import CaddyProcess  # noqa: E402

DOMAIN = "bench.test"
HASH = bcrypt.hashpw(b"bench-password", bcrypt.gensalt(4)).decode()
ROLES = {"api": "", "studio": "-studio", "mail": "-mail"}


def spec_for(name: str, port: int) -> SiteSpec:
    return SiteSpec(
        name=name,
        hosts={role: f"{name}{suffix}.{DOMAIN}" for role, suffix in ROLES.items()},
        api_upstream=f"127.0.0.1:{port}",
        studio_upstream=f"127.0.0.1:{port}",
        user="supabase",
        password_hash=HASH,
        mail_upstream=f"127.0.0.1:{port + 2}",
    )


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def bench(size: int, runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="sbm-bench-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        # No server in the Caddyfile: the first plan below creates it, as on a fresh Caddy.
        world = CaddyProcess(root, Path(tmp) / "caddy", with_server=False)
        world.start()
        try:
            settings = CaddyConfig(
                admin=world.admin_url,
                lock_path=root / ".caddy.lock",
                snippet_dir=root / "caddy",
                scheme="http",
                public_port=world.http_port,
                owner="bench",
                bind="127.0.0.1",  # the server the first plan creates binds loopback
            )
            specs = [spec_for(f"i{n}", 20000 + 3 * n) for n in range(size)]
            # Route the N instances in one change, and write their snippets.
            with AdminClient(settings.admin) as client:
                apps, etag = client.get("/config/apps")
                req = plan(apps, settings, apply=specs).request
                client.request(req.method, req.path, body=req.body, etag=etag)
            for spec in specs:
                write_snippet(settings, spec)  # no client: not validated

            floor, apply, published, reload = [], [], [], []
            raw = httpx.Client(base_url=world.admin_url, timeout=60)
            for k in range(runs):
                # floor: one raw request with the same route, nothing read before it
                spec = spec_for(f"raw{k}", 40000 + 3 * k)
                body = render_route(spec, settings)
                floor.append(
                    timed(
                        lambda body=body: raw.post(
                            "/config/apps/http/servers/supabase/routes", json=body
                        ).raise_for_status()
                    )
                )
                raw.delete(f"/id/{settings.route_id(f'raw{k}')}").raise_for_status()

                spec = spec_for(f"new{k}", 50000 + 3 * k)
                apply.append(timed(lambda spec=spec: apply_instance(settings, spec)))
                remove_instance(settings, spec.name)

                spec = spec_for(f"pub{k}", 55000 + 3 * k)
                published.append(timed(lambda spec=spec: publish(settings, spec)))
                unpublish(settings, spec.name)
            for k in range(max(3, runs // 2)):
                spec = spec_for(f"file{k}", 60000 + 3 * k)

                def snippet_and_reload(spec=spec) -> None:
                    with AdminClient(settings.admin) as client:
                        write_snippet(settings, spec, client=client)
                    world.reload()

                reload.append(timed(snippet_and_reload))
                remove_snippet(settings, spec.name)
            raw.close()
            return {
                "floor": statistics.median(floor),
                "apply": statistics.median(apply),
                "publish": statistics.median(published),
                "reload": statistics.median(reload),
            }
        finally:
            world.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,100,500")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"{'N':>5} | {'floor ms':>9} | {'apply ms':>9} | {'apply/floor':>11} | "
        f"{'publish ms':>10} | {'snippet+reload ms':>17} | {'reload/floor':>12}"
    )
    print("-" * 95)
    for size in sizes:
        r = bench(size, args.runs)
        print(
            f"{size:>5} | {r['floor']:>9.1f} | {r['apply']:>9.1f} | "
            f"{r['apply'] / r['floor']:>10.2f}x | {r['publish']:>10.1f} | {r['reload']:>17.1f} | "
            f"{r['reload'] / r['floor']:>11.2f}x",
            flush=True,
        )
    print("target: apply within 1.5x the floor")


if __name__ == "__main__":
    main()
