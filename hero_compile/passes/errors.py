"""The one way a pass declines a graph."""


class RewriteUnsupported(Exception):
    """A pass cannot rewrite this graph; the message says which node or structure is why.

    The backend catches it and compiles the graph with plain Inductor, warning once with the message.
    """
