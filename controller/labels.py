"""Labels supabase-manager puts on every Docker object it creates (containers, networks,
volumes), and reads back to know which objects are its own."""

# The instance (= compose project) the object belongs to.
INSTANCE_LABEL = "io.supabase-manager.instance"
# The data root (ROOT/root-id) that created it: objects of another ROOT on the same engine, or of a
# hand-run stack, are never adopted, changed or removed.
ROOT_LABEL = "io.supabase-manager.root"
# A container's host ports ("23001,23002"): visible even while it is stopped, when the engine
# lists no port for it, so another ROOT does not hand them out again.
PORTS_LABEL = "io.supabase-manager.ports"
