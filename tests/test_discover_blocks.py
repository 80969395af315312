"""Block-stack discovery on real Dynamo graphs (captured with a recording backend)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.fx as fx
from conftest import capture_graph
from hypothesis import given, settings
from hypothesis import strategies as st
from models import DualStreamTransformer, NoStackModel, StackModel

from hero_compile.passes.discover_blocks import BlockStack, discover_blocks, module_path
from hero_compile.passes.errors import RewriteUnsupported
from hero_compile.passes.graph_surgery import nodes_by_name
from hero_compile.testing.dit import DiTConfig, make_dit


def module_paths(node: fx.Node) -> list[str]:
    return [module_path(path) for path, _ in (node.meta.get("nn_module_stack") or {}).values()]


def in_module(node: fx.Node, path: str) -> bool:
    return any(p == path or p.startswith(path + ".") for p in module_paths(node))


def streams_between_blocks(gm: fx.GraphModule, stack: BlockStack) -> list[set[str]]:
    """For each block, the distinct values it reads through its stream slots (one per token stream).

    ``stream_slots`` has one entry per *read site* (a DiT block reads its hidden states in its first norm and
    in the residual add: two slots, one stream), so streams are counted as distinct values read.
    """
    nodes = nodes_by_name(gm.graph)
    streams = []
    for block in stack.blocks:
        values = {stack.input_at(block, slot, nodes).name for slot in stack.stream_slots}
        assert values == {n.name for n in stack.stream_inputs(block, nodes)}
        streams.append(values)
    return streams


def check_stack_invariants(gm: fx.GraphModule, stack: BlockStack, depth: int, container: str) -> None:
    assert len(stack.blocks) == depth
    assert [b.index for b in stack.blocks] == list(range(depth))
    assert stack.path.endswith(container)
    for i, block in enumerate(stack.blocks):
        assert re.search(rf"(^|\.){container}\.{i}$", block.path), block.path
    nodes = nodes_by_name(gm.graph)
    for block in stack.blocks:
        assert block.nodes
        for name in block.nodes:
            assert in_module(nodes[name], block.path), (name, block.path, module_paths(nodes[name]))
    # prelude, blocks, tail and postlude partition the computing nodes, in graph order
    order = [n.name for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    assert [*stack.prelude, *(n for b in stack.blocks for n in b.nodes), *stack.tail, *stack.postlude] == order
    # every stream slot of a block reads a value computed by the block just before it
    for earlier, later in zip(stack.blocks, stack.blocks[1:]):
        for slot in stack.stream_slots:
            assert stack.input_at(later, slot, nodes).name in earlier.outputs


def test_dit_has_12_blocks_one_stream() -> None:
    model = make_dit(DiTConfig(depth=12, hidden=32, heads=2, frames=1, height=8, width=8))
    gm = capture_graph(model, torch.randn(1, 4, 1, 8, 8), torch.tensor([500.0]))
    stack = discover_blocks(gm)
    check_stack_invariants(gm, stack, 12, "blocks")
    assert [p.rsplit(".", 2)[-2:] for p in stack.paths] == [["blocks", str(i)] for i in range(12)]
    assert stack.prelude and stack.postlude
    # patch embedding and timestep MLP come before the stack, the final projection after it
    nodes = nodes_by_name(gm.graph)
    assert any(in_module(nodes[n], "patch_embed") for n in stack.prelude)
    assert any(in_module(nodes[n], "time_mlp") for n in stack.prelude)
    assert any(in_module(nodes[n], "proj_out") for n in stack.postlude)
    # a single hidden-state stream goes from one block to the next
    assert all(len(values) == 1 for values in streams_between_blocks(gm, stack))
    for block in stack.blocks[:-1]:
        assert len(block.outputs) == 1


def test_dual_stream_blocks_pass_two_streams() -> None:
    model = DualStreamTransformer(depth=4)
    gm = capture_graph(model, torch.randn(1, 16, 4), torch.randn(1, 5, 8), torch.tensor([500.0]))
    stack = discover_blocks(gm)
    check_stack_invariants(gm, stack, 4, "transformer_blocks")
    assert stack.prelude and stack.postlude
    streams = streams_between_blocks(gm, stack)
    assert all(len(values) == 2 for values in streams), streams
    # both streams are outputs of every block but the last, whose text stream nobody reads
    for block in stack.blocks[:-1]:
        assert len(block.outputs) == 2
    assert len(stack.blocks[-1].outputs) == 1


def test_a_stack_of_another_structure_after_the_first_is_its_tail() -> None:
    # Eight single-stream blocks hold more nodes than the three dual-stream ones (as in Flux and HunyuanVideo):
    # the stack is still the first one, and the single-stream blocks its tail.
    model = DualStreamTransformer(depth=3, single_depth=8)
    gm = capture_graph(model, torch.randn(1, 16, 4), torch.randn(1, 5, 8), torch.tensor([500.0]))
    stack = discover_blocks(gm)
    check_stack_invariants(gm, stack, 3, "transformer_blocks")
    assert list(stack.tail_paths) == [f"single_transformer_blocks.{i}" for i in range(8)]
    nodes = nodes_by_name(gm.graph)
    assert any(nodes[n].target is torch.cat for n in stack.tail)  # the glue joining the streams
    assert not any(in_module(nodes[n], "single_transformer_blocks") for n in stack.postlude)
    assert any(in_module(nodes[n], "proj_out") for n in stack.postlude)
    assert discover_blocks(capture_graph(DualStreamTransformer(depth=3), torch.randn(1, 16, 4), torch.randn(1, 5, 8),
                                         torch.tensor([500.0]))).tail == ()


def test_model_without_module_list_is_unsupported() -> None:
    gm = capture_graph(NoStackModel(), torch.randn(1, 6, 4), torch.tensor([500.0]))
    with pytest.raises(RewriteUnsupported, match="no block stack"):
        discover_blocks(gm)


def test_single_block_is_not_a_stack() -> None:
    gm = capture_graph(StackModel(depth=1), torch.randn(1, 6, 4), torch.tensor([500.0]))
    with pytest.raises(RewriteUnsupported, match="1 block"):
        discover_blocks(gm)


def test_ops_hooks_add_to_the_first_and_last_block_go_before_and_after_the_stack() -> None:
    # As diffusers' context parallelism splits the first block's input, and may gather the last one's output.
    model = StackModel(depth=4)
    model.blocks[0].register_forward_pre_hook(lambda module, args: (args[0].chunk(2, dim=1)[0], *args[1:]))
    model.blocks[-1].register_forward_hook(lambda module, args, output: torch.cat([output, output], dim=1))
    gm = capture_graph(model, torch.randn(1, 6, 4), torch.tensor([500.0]))
    stack = discover_blocks(gm)
    check_stack_invariants(gm, stack, 4, "blocks")
    nodes = nodes_by_name(gm.graph)
    assert any(in_module(nodes[n], "blocks.0") for n in stack.prelude)
    assert any(in_module(nodes[n], "blocks.3") and nodes[n].target is torch.cat for n in stack.postlude)


def test_module_paths_are_free_of_the_wrappers_dynamo_records() -> None:
    for recorded in ("L['self'].blocks.0", "L['self'].__dict__['_modules']['blocks']._modules['0']",
                     "L['function_reference'].forward.__self__.blocks.0"):  # a forward wrapped by diffusers' hooks
        assert module_path(recorded) == "blocks.0"


@settings(max_examples=10)
@given(depth=st.integers(2, 8), width=st.sampled_from([8, 16, 24]), tokens=st.integers(1, 6), batch=st.integers(1, 2))
def test_blocks_found_equal_depth(depth: int, width: int, tokens: int, batch: int) -> None:
    model = StackModel(depth=depth, width=width)
    gm = capture_graph(model, torch.randn(batch, tokens, 4), torch.full((batch,), 500.0))
    stack = discover_blocks(gm)
    check_stack_invariants(gm, stack, depth, "blocks")
    assert all(len(values) == 1 for values in streams_between_blocks(gm, stack))
