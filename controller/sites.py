"""An instance's public sites as Caddy should serve them, derived from its record and .env."""

from collections.abc import Mapping

from controller.caddy import SiteSpec, studio_password_hash
from controller.config import Settings
from controller.errors import OperationError
from controller.render import role_port_key
from controller.state import InstanceRecord
from controller.templatefiles import MAIL_OVERLAY, TemplateFiles


def site_spec(
    settings: Settings, record: InstanceRecord, files: TemplateFiles, env: Mapping[str, str]
) -> SiteSpec:
    """API host to the gateway, Studio host to Studio's own port (behind basic auth with the
    instance's dashboard credentials), mail host to the mail catcher when the overlay is on."""

    def upstream(role: str) -> str | None:
        key = role_port_key(files, record.overlays, role)
        return f"127.0.0.1:{record.ports[key]}" if key in record.ports else None

    password = env.get("DASHBOARD_PASSWORD") or ""
    if not password:
        # An empty password would leave Studio open to anyone who knows the host name.
        raise OperationError(f"{record.name} has no DASHBOARD_PASSWORD: Studio is not published")
    hosts = settings.hosts(record.name)
    mail = upstream("mail") if MAIL_OVERLAY in record.overlays else None
    if not mail:
        hosts.pop("mail")
    # The hash is cached beside the instance so the spec, and so the live route, stays the same
    # from one run to the next while the password does not change.
    cache = settings.instance_dir(record.name) / ".studio-auth"
    return SiteSpec(
        name=record.name,
        hosts=hosts,
        api_upstream=upstream("gateway") or "",
        studio_upstream=upstream("studio") or upstream("gateway") or "",
        studio_user=env.get("DASHBOARD_USERNAME") or "supabase",
        studio_password_hash=studio_password_hash(cache, password),
        mail_upstream=mail,
    )
