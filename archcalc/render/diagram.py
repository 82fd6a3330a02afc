"""Diagram -> Mermaid flowchart | Graphviz DOT text. Rendering never computes: labels are the node's own figures,
formatted (units at this edge only), and escaped for each language.

A node's label: its name; its kind (and kernel/stride/pad where the table shows one); its output shape; its cost
(parameters and MACs; blocks collapsed by --depth show their rows' sums).
"""

from __future__ import annotations

import json

from archcalc.core.diagram import Diagram, Node
from archcalc.core.units import dims, si


def visible(text: str) -> str:
    """User text with its line breaks as spaces and every other control character (C0, DEL, C1) and the
    noncharacters U+FFFE/U+FFFF written out as `\\xNN` / `\\uNNNN`: neither language can hold them (a NUL ends
    graphviz's input; Mermaid's front matter is YAML, which refuses DEL and C1), and a reader should see them."""
    text = " ".join(text.splitlines())
    if text.isprintable():  # the common case; (isprintable is False for more than controls, checked below)
        return text
    return "".join(_written_out(c) for c in text)


def _written_out(c: str) -> str:
    code = ord(c)
    if c == "\t":
        return " "
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return f"\\x{code:02x}"
    if code in (0xFFFE, 0xFFFF):
        return f"\\u{code:04x}"
    return c


def label_lines(node: Node) -> list[str]:
    if node.role in ("input", "output"):
        return [f"{node.role} {node.name}" if node.name not in ("input", "output") else node.name, dims(node.output)]
    kind = f"{node.kind} {node.config}".strip()
    shapes = [dims(s) for s in node.outputs] or [dims(node.output)]  # a collapsed block's outputs, one a line
    return [node.name, kind, *shapes, f"{si(node.params)} params, {si(node.macs)} MACs"]


def title(d: Diagram) -> str:
    batch = f", batch {d.batch}" if d.batch != 1 else ""
    return f"{d.name} — input {dims(d.input)}{batch}"


# ---- Mermaid ------------------------------------------------------------------------------------------------------

# Shapes: inputs and outputs stadiums, layers rectangles, merges hexagons, collapsed blocks subroutines.
_MERMAID_SHAPES = {"input": ('(["', '"])'), "output": ('(["', '"])'), "layer": ('["', '"]'), "merge": ('{{"', '"}}'),
                   "block": ('[["', '"]]')}
# Mermaid's entity codes (#name; or #decimal;) for what would end a quoted label, start markdown or an entity,
# or be read as HTML.
_MERMAID_ESCAPES = {"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "&": "#amp;", "`": "#96;", "%": "#37;"}


def mermaid_text(text: str) -> str:
    """User text inside a quoted Mermaid label: special characters as entity codes, line breaks as spaces."""
    return "".join(_MERMAID_ESCAPES.get(c, c) for c in visible(text))


# Mermaid's default limits (its `maxEdges` and `maxTextSize` settings): past either, mermaid.live, GitHub and most
# editors draw an error instead of the diagram.
MERMAID_MAX_EDGES = 500
MERMAID_MAX_TEXT = 50_000


def mermaid_too_large(d: Diagram, text: str) -> str:
    """What a Mermaid diagram exceeds of Mermaid's default limits, as a warning's text ('' when it fits)."""
    over = ([f"{len(d.edges):,} edges (Mermaid's default limit: {MERMAID_MAX_EDGES:,})"]
            if len(d.edges) > MERMAID_MAX_EDGES else [])
    over += ([f"{len(text):,} characters (Mermaid's default limit: {MERMAID_MAX_TEXT:,})"]
             if len(text) > MERMAID_MAX_TEXT else [])
    if not over:
        return ""
    return (f"the Mermaid diagram has {' and '.join(over)}: renderers will refuse to draw it; collapse blocks with "
            "--depth N, or write --format dot or svg")


def mermaid(d: Diagram) -> str:
    ids = {node.id: f"n{i}" for i, node in enumerate(d.nodes)}
    # The title goes in the front matter, a YAML mapping: a JSON string is a valid YAML double-quoted scalar.
    lines = ["---", f"title: {json.dumps(visible(title(d)), ensure_ascii=False)}", "---", "flowchart TB"]
    for node in d.nodes:
        opening, closing = _MERMAID_SHAPES[node.role]
        label = "<br>".join(mermaid_text(line) for line in label_lines(node))
        lines.append(f"  {ids[node.id]}{opening}{label}{closing}")
    lines += [f"  {ids[a]} -->|\"{mermaid_text(label)}\"| {ids[b]}" if label else f"  {ids[a]} --> {ids[b]}"
              for a, b, label in d.edges]
    unused = [ids[n.id] for n in d.nodes if not n.used]
    if unused:
        lines += ["  classDef unused stroke-dasharray: 4 4", f"  class {','.join(unused)} unused"]
    return "\n".join(lines) + "\n"


# ---- DOT ----------------------------------------------------------------------------------------------------------

# Shapes, as for Mermaid; a collapsed block is filled. A node no output depends on is dashed and grey.
_DOT_SHAPES = {"input": ("oval", ()), "output": ("oval", ()), "layer": ("box", ("rounded",)),
               "merge": ("hexagon", ()), "block": ("box", ("rounded", "filled"))}


def _dot_attributes(node: Node) -> str:
    shape, styles = _DOT_SHAPES[node.role]
    styles = styles if node.used else (*styles, "dashed")
    attributes = [f"shape={shape}"] + ([f'style="{",".join(styles)}"'] if styles else [])
    if "filled" in styles:
        attributes.append('fillcolor="#eeeeee"')
    if not node.used:
        attributes.append("color=gray")
    return ", ".join(attributes)


def dot_string(text: str) -> str:
    """A DOT quoted string holding `text` literally: backslashes (which start escString sequences such as \\N and
    \\l in labels) and quotes escaped, `&` as `&amp;` (graphviz reads HTML entities in strings: `&amp;` written
    as is would be drawn as `&`), control characters written out (`visible`)."""
    text = visible(text).replace("&", "&amp;")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dot_label(lines: list[str]) -> str:
    """Several lines as one DOT label: each line escaped, joined with DOT's centred line break \\n."""
    return '"' + "\\n".join(dot_string(line)[1:-1] for line in lines) + '"'


def dot(d: Diagram) -> str:
    lines = [f"digraph {dot_string(d.name)} {{",
             f"  graph [rankdir=TB, labelloc=t, fontname=Helvetica, label={dot_string(title(d))}];",
             "  node [fontname=Helvetica, fontsize=10];",
             "  edge [arrowsize=0.6];"]
    for node in d.nodes:
        lines.append(f"  {dot_string(node.id)} [label={dot_label(label_lines(node))}, {_dot_attributes(node)}];")
    lines += [f"  {dot_string(a)} -> {dot_string(b)}" + (f" [label={dot_string(label)}];" if label else ";")
              for a, b, label in d.edges]
    lines.append("}")
    return "\n".join(lines) + "\n"
