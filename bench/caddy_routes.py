"""How long publishing one instance takes when N instances are already routed (not a test).

For N in 10, 100, 500 it starts its own Caddy on loopback (admin and listener on free 127.0.0.1
ports), routes N instances, then compares, as medians over several runs:

- floor: one raw admin request carrying the same route (POST .../routes), nothing else;
- apply: ``apply_instance`` (GET /config/apps with ETag, plan, one If-Match write, under the flock);
- snippet+reload: ``write_snippet`` (validated with /adapt) plus ``caddy reload``.

Target: apply within 1.5x the floor.

    .venv/bin/python bench/caddy_routes.py [--sizes 10,100,500] [--runs 7]
"""

import argparse
import os
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
    SiteSpec,
    apply_instance,
    remove_instance,
    remove_snippet,
    write_snippet,
)
from controller.caddy.admin import AdminClient  # noqa: E402
from controller.caddy.routes import BIND_ENV, plan, render_route  # noqa: E402
from controller.config import Settings  # noqa: E402
from tests.world.caddy import CaddyProcess  # noqa: E402

DOMAIN = "bench.test"
HASH = bcrypt.hashpw(b"bench-password", bcrypt.gensalt(4)).decode()


def spec_for(settings: Settings, name: str, port: int) -> SiteSpec:
    return SiteSpec(
        name=name,
        hosts=settings.hosts(name),
        api_upstream=f"127.0.0.1:{port}",
        studio_upstream=f"127.0.0.1:{port + 1}",
        studio_user="supabase",
        studio_password_hash=HASH,
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
            settings = Settings(
                root=root,
                domain=DOMAIN,
                scheme="http",
                public_port=world.http_port,
                caddy_admin=world.admin_url,
            )
            specs = [spec_for(settings, f"i{n}", 20000 + 3 * n) for n in range(size)]
            # Route the N instances in one change, and write their snippets.
            with AdminClient(settings.caddy_admin) as client:
                apps, etag = client.get("/config/apps")
                req = plan(apps, settings, apply=specs).request
                client.request(req.method, req.path, body=req.body, etag=etag)
            for spec in specs:
                write_snippet(settings, spec, validate_with_caddy=False)

            floor, apply, reload = [], [], []
            raw = httpx.Client(base_url=world.admin_url, timeout=60)
            for k in range(runs):
                # floor: one raw request with the same route, nothing read before it
                spec = spec_for(settings, f"raw{k}", 40000 + 3 * k)
                body = render_route(spec)
                floor.append(
                    timed(
                        lambda body=body: raw.post(
                            "/config/apps/http/servers/supabase/routes", json=body
                        ).raise_for_status()
                    )
                )
                raw.delete(f"/id/sbm-raw{k}").raise_for_status()

                spec = spec_for(settings, f"new{k}", 50000 + 3 * k)
                apply.append(timed(lambda spec=spec: apply_instance(settings, spec)))
                remove_instance(settings, spec.name)
            for k in range(max(3, runs // 2)):
                spec = spec_for(settings, f"file{k}", 60000 + 3 * k)

                def snippet_and_reload(spec=spec) -> None:
                    write_snippet(settings, spec)
                    world.reload()

                reload.append(timed(snippet_and_reload))
                remove_snippet(settings, spec.name)
            raw.close()
            return {
                "floor": statistics.median(floor),
                "apply": statistics.median(apply),
                "reload": statistics.median(reload),
            }
        finally:
            world.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,100,500")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault(BIND_ENV, "127.0.0.1")  # a server the adapter creates binds loopback
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"{'N':>5} | {'floor ms':>9} | {'apply ms':>9} | {'apply/floor':>11} | "
        f"{'snippet+reload ms':>17} | {'reload/floor':>12}"
    )
    print("-" * 80)
    for size in sizes:
        r = bench(size, args.runs)
        print(
            f"{size:>5} | {r['floor']:>9.1f} | {r['apply']:>9.1f} | "
            f"{r['apply'] / r['floor']:>10.2f}x | {r['reload']:>17.1f} | "
            f"{r['reload'] / r['floor']:>11.2f}x",
            flush=True,
        )
    print("target: apply within 1.5x the floor")


if __name__ == "__main__":
    main()
