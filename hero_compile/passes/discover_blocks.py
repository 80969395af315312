"""Find the stack of transformer blocks in a Dynamo FX graph.

Dynamo inlines modules, so the graph is flat; each call node carries ``meta["nn_module_stack"]``, whose
entries name the modules the call ran inside (``L['self'].transformer_blocks.3.attn1``). The children of a
container that end in an index (``<prefix>.<i>``) and whose subgraphs have the same sequence of ops are the
blocks; code that runs between them (glue, or a second interleaved stack) joins the block before it. Nothing
here knows a model class: the structure is read off the graph.

Some models run a second stack of another structure after the first (Flux and HunyuanVideo: dual-stream blocks,
then single-stream blocks). The first substantial stack is the one profiled, split and refreshed; its *tail*,
the block-sized children after it (its own last blocks where they differ, and the stacks that follow), runs
after the deep blocks and is skipped with them on cheap steps.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch.fx as fx
from torch._dynamo.utils import counters

from hero_compile.passes.errors import RewriteUnsupported
from hero_compile.passes.graph_surgery import flat_args

_INDEXED_CHILD = re.compile(r"^(?P<prefix>.+)\.(?P<index>\d+)$")

MIN_BLOCKS = 2

MIN_STACK_SHARE = 0.25
"""A stack holding less than this share of the nodes of all stacks (a text refiner in the prelude) is not the
main stack."""

MIN_TAIL_BLOCK_SHARE = 0.25
"""A container after the stack is part of its tail when each child holds at least this share of a stack
block's nodes."""


@dataclass(frozen=True)
class Block:
    """One block of the stack. Node names refer to the graph the stack was discovered in."""

    index: int
    path: str
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]
    """Values the block reads that it does not compute (activations, parameters), in order of first use."""
    outputs: tuple[str, ...]
    """Values the block computes that are read after it, in graph order."""


@dataclass(frozen=True)
class InputSlot:
    """Where a block first reads one of its inputs: ``(node position in the block, argument position)``.

    Blocks have the same op sequence, so a slot names the same role in every block of the stack.
    """

    position: int
    argument: int


@dataclass(frozen=True)
class BlockStack:
    """The block stack of a graph and the code around it."""

    path: str
    blocks: tuple[Block, ...]
    prelude: tuple[str, ...]
    postlude: tuple[str, ...]
    stream_slots: tuple[InputSlot, ...]
    """Input slots through which one block passes its tokens to the next (hidden states, text states)."""
    tail_paths: tuple[str, ...] = ()
    """Module paths of the block-sized children that run after the stack: its own last blocks where they differ
    from the others, then the stacks that follow (single-stream blocks after dual-stream ones)."""
    tail: tuple[str, ...] = ()
    """Every node from the end of the last block to the end of the last tail block (glue included)."""

    @property
    def paths(self) -> list[str]:
        return [block.path for block in self.blocks]

    def input_at(self, block: Block, slot: InputSlot, nodes: dict[str, fx.Node]) -> fx.Node:
        """The value that ``block`` reads through ``slot``; ``nodes`` maps names to nodes of the graph."""
        return flat_args(nodes[block.nodes[slot.position]])[slot.argument]

    def stream_inputs(self, block: Block, nodes: dict[str, fx.Node]) -> list[fx.Node]:
        """The distinct values ``block`` reads through its stream slots (one per token stream)."""
        return list(dict.fromkeys(self.input_at(block, slot, nodes) for slot in self.stream_slots))

    def slot_fed_by(self, position: int, nodes: dict[str, fx.Node]) -> InputSlot | None:
        """The stream slot of the next block that the value at ``position`` of a block feeds, if any."""
        for upstream, downstream in pairwise(self.blocks):
            for slot in self.stream_slots:
                if self.input_at(downstream, slot, nodes).name == upstream.nodes[position]:
                    return slot
        return None


def discover_blocks(gm: fx.GraphModule) -> BlockStack:
    """Find the block stack of ``gm``; raises :class:`RewriteUnsupported` with the reason if there is none."""
    graph = gm.graph
    nodes = list(graph.nodes)
    order = {node: i for i, node in enumerate(nodes)}
    containers = _containers(_block_owner_of_each_node(graph), nodes, order)
    if not containers:
        raise RewriteUnsupported("no module of the graph is an indexed child of a container (no block stack)")
    main = _main_stack(containers, order)
    if len(main.blocks) < MIN_BLOCKS:
        raise RewriteUnsupported(f"no repeated block stack (found {len(main.blocks)} block(s) under {main.prefix!r})")
    first, last = order[main.blocks[0][0]], order[main.blocks[-1][-1]]
    tails = _tail_containers(containers, main, last, order)
    tail_children = [(main.prefix, i) for i in main.children if i > main.indices[-1]]
    tail_children += [(c.prefix, i) for c in tails for i in sorted(c.children)]
    tail_end = max([last, *(order[node] for prefix, i in tail_children for node in containers[prefix].children[i])])

    blocks = tuple(
        _make_block(i, module_path(f"{main.prefix}.{index}"), block_nodes)
        for i, (index, block_nodes) in enumerate(zip(main.indices, main.blocks))
    )
    stack = BlockStack(
        path=module_path(main.prefix),
        blocks=blocks,
        prelude=tuple(n.name for n in nodes if n.op != "placeholder" and order[n] < first),
        postlude=tuple(n.name for n in nodes if n.op not in ("placeholder", "output") and order[n] > tail_end),
        stream_slots=_stream_slots(main.blocks),
        tail_paths=tuple(module_path(f"{prefix}.{i}") for prefix, i in tail_children),
        tail=tuple(n.name for n in nodes[last + 1 : tail_end + 1] if n.op != "output"),
    )
    if not stack.stream_slots:
        raise RewriteUnsupported("blocks do not pass any value from one to the next")
    counters["hero"]["blocks_discovered"] += len(blocks)
    counters["hero"]["tail_blocks_discovered"] += len(stack.tail_paths)
    return stack


@dataclass(frozen=True)
class _Container:
    """A container's indexed children (``children``: index -> its nodes) and, as ``indices``/``blocks``, its
    longest run of identical ones as stack blocks (code between blocks included)."""

    prefix: str
    children: dict[int, list[fx.Node]]
    indices: tuple[int, ...]
    blocks: tuple[tuple[fx.Node, ...], ...]

    @property
    def size(self) -> int:
        return sum(len(block) for block in self.blocks)


def _containers(owner: dict[fx.Node, tuple[str, int]], nodes: list[fx.Node], order: dict[fx.Node, int]
                ) -> dict[str, _Container]:
    by_prefix: dict[str, dict[int, list[fx.Node]]] = defaultdict(lambda: defaultdict(list))
    for node, (prefix, index) in owner.items():
        by_prefix[prefix][index].append(node)
    containers = {}
    for prefix, children in by_prefix.items():
        indices = sorted(children)
        blocks_nodes = _without_hook_ops(_with_code_between([children[i] for i in indices], nodes, order))
        run = _longest_identical_run(blocks_nodes)
        containers[prefix] = _Container(prefix, dict(children), tuple(indices[run.start : run.stop]),
                                        tuple(tuple(b) for b in blocks_nodes[run.start : run.stop]))
    return containers


def _main_stack(containers: dict[str, _Container], order: dict[fx.Node, int]) -> _Container:
    """The first stack in graph order that holds a substantial share of the stacked nodes (the largest one when
    no container repeats a block)."""
    stacks = [c for c in containers.values() if len(c.blocks) >= MIN_BLOCKS]
    if not stacks:
        return max(containers.values(), key=lambda c: c.size)
    total = sum(s.size for s in stacks)
    return min((s for s in stacks if s.size >= MIN_STACK_SHARE * total), key=lambda s: order[s.blocks[0][0]])


def _tail_containers(containers: dict[str, _Container], main: _Container, last: int, order: dict[fx.Node, int]
                     ) -> list[_Container]:
    """Containers after the main stack whose children are blocks too: at least ``MIN_BLOCKS`` children, each
    at least ``MIN_TAIL_BLOCK_SHARE`` of a main block's size (a postlude's ``nn.Sequential`` of single layers is
    not a tail). Their children need not be identical to each other."""
    block_size = main.size / len(main.blocks)
    return [
        c for c in containers.values()
        if c is not main and len(c.children) >= MIN_BLOCKS
        and min(order[n] for nodes in c.children.values() for n in nodes) > last
        and min(len(nodes) for nodes in c.children.values()) >= MIN_TAIL_BLOCK_SHARE * block_size
    ]


# The compiled frame's local (``L['self']``) and, for a forward wrapped by hooks (diffusers' hook registry, which
# context parallelism uses), the way to the module from the wrapper (``L['function_reference'].forward.__self__``).
_DYNAMO_ROOT = re.compile(r"^L\['\w+'\](?:.*\.__self__)?\.?")
_MODULES_ENTRY = re.compile(r"\.?(?:__dict__\['_modules'\]|_modules)\['([^']+)'\]")


def module_path(dynamo_path: str) -> str:
    """The path ``model.get_submodule`` takes, from the one Dynamo records: ``L['self'].blocks.0``,
    ``L['self'].__dict__['_modules']['blocks']._modules['0']`` (models whose ``forward`` is wrapped) and
    ``L['function_reference'].forward.__self__.blocks.0`` (a forward wrapped by hooks) are all ``blocks.0``, so a
    profile saved on one device matches a model run on several."""
    return _MODULES_ENTRY.sub(r".\1", _DYNAMO_ROOT.sub("", dynamo_path)).strip(".")


def _block_owner_of_each_node(graph: fx.Graph) -> dict[fx.Node, tuple[str, int]]:
    """For each computing node, the outermost indexed container child it runs in: ``(prefix, index)``."""
    owner = {}
    for node in graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        for path, _ in (node.meta.get("nn_module_stack") or {}).values():
            match = _INDEXED_CHILD.match(path)
            if match:
                owner[node] = (match["prefix"], int(match["index"]))
                break
    return owner


def _op_sequence(nodes: list[fx.Node]) -> tuple[tuple[str, str], ...]:
    return tuple((n.op, _target_name(n.target)) for n in nodes)


def _target_name(target: object) -> str:
    return target if isinstance(target, str) else getattr(target, "__qualname__", None) or repr(target)


def _with_code_between(
    blocks_nodes: list[list[fx.Node]], nodes: list[fx.Node], order: dict[fx.Node, int]
) -> list[list[fx.Node]]:
    """Each block extended by the code that runs after it, up to the next block.

    Stacks whose blocks are followed by glue (Latte's reshapes between its spatial and temporal blocks, or a
    second stack interleaved with the first) repeat as periods: block ``i`` and what follows it. The last
    period is as long as the one before it. Without code between blocks the blocks are returned unchanged.
    """
    starts = [order[block[0]] for block in blocks_nodes]
    if any(a >= b for a, b in pairwise(starts)):
        return []  # not a stack: its children do not run in index order
    if all(order[block[-1]] + 1 == start for block, start in zip(blocks_nodes, starts[1:])):
        return blocks_nodes
    periods = [nodes[start:end] for start, end in pairwise(starts)]
    if periods:
        periods.append(nodes[starts[-1] : starts[-1] + len(periods[-1])])
    # The output node is never part of a block.
    return [[n for n in period if n.op != "output"] for period in periods] or blocks_nodes


def _without_hook_ops(blocks_nodes: list[list[fx.Node]]) -> list[list[fx.Node]]:
    """The blocks without the ops that hooks add around the first and the last of them (diffusers' context
    parallelism splits the first block's input before it runs, and may gather the last one's output after).

    A first block whose op sequence is the next block's with ops before it loses those ops to the prelude; a
    last block that is the previous block's with ops after it loses those to the code after the stack.
    """
    blocks = list(blocks_nodes)
    if len(blocks) < MIN_BLOCKS:
        return blocks
    body = len(blocks[1])
    if 0 < body < len(blocks[0]) and _op_sequence(blocks[0][-body:]) == _op_sequence(blocks[1]):
        blocks[0] = blocks[0][-body:]
    body = len(blocks[-2])
    if 0 < body < len(blocks[-1]) and _op_sequence(blocks[-1][:body]) == _op_sequence(blocks[-2]):
        blocks[-1] = blocks[-1][:body]
    return blocks


def _longest_identical_run(blocks_nodes: list[list[fx.Node]]) -> range:
    """The longest run of consecutive blocks with the same op sequence (a stack may end in a variant block)."""
    best = range(0, 0)
    start = 0
    for i in range(1, len(blocks_nodes) + 1):
        if i == len(blocks_nodes) or _op_sequence(blocks_nodes[i]) != _op_sequence(blocks_nodes[start]):
            if i - start > len(best):
                best = range(start, i)
            start = i
    return best


def _make_block(index: int, path: str, nodes: Sequence[fx.Node]) -> Block:
    inside = set(nodes)
    inputs: dict[str, None] = {}
    for node in nodes:
        for arg in flat_args(node):
            if arg not in inside:
                inputs[arg.name] = None
    outputs = [n.name for n in nodes if any(user not in inside for user in n.users)]
    return Block(index, path, tuple(n.name for n in nodes), tuple(inputs), tuple(outputs))


def _stream_slots(blocks_nodes: Sequence[Sequence[fx.Node]]) -> tuple[InputSlot, ...]:
    """Slots that, in some block after the first, read a value computed by the block before it."""
    slots: dict[InputSlot, None] = {}
    for previous, current in pairwise(blocks_nodes):
        produced = set(previous)
        for position, node in enumerate(current):
            for argument, arg in enumerate(flat_args(node)):
                if arg in produced:
                    slots[InputSlot(position, argument)] = None
    return tuple(slots)
