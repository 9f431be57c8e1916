"""OpenVINO's stateful form of a decoder: the KV cache lives inside the compiled model as state.

The exported graph takes the cache as inputs (``past.*``) and returns it as outputs (``present.*``),
so a stateless decode step copies the whole cache into the graph and out again for one token. The
stateful form (as optimum-intel ships decoders, and what OpenVINO GenAI runs) turns each
past/present pair into a variable (ReadValue/Assign): a step moves one token in and the logits out.

As in optimum-intel, two things are added around OpenVINO's make-stateful transformation:
- ``beam_idx`` (one index per batch row): the cache rows the next step continues from, gathered
  inside the graph (a beam search reorders beams with it; greedy decoding passes 0..batch-1);
- a state initializer: a sequence's first call starts from a zero-length cache shaped by the
  batch of ``input_ids`` (``reset_state`` on the request starts a new sequence).
"""

from __future__ import annotations

import numpy as np

PAST_PREFIX, PRESENT_PREFIX = "past.", "present."
BEAM_INPUT = "beam_idx"


def cache_names(model) -> tuple[list[str], list[str]]:
    """(past inputs, present outputs) of an exported decoder, in layer order; empty for encoders."""
    past = [port.get_any_name() for port in model.inputs if port.get_any_name().startswith(PAST_PREFIX)]
    present = [port.get_any_name() for port in model.outputs if port.get_any_name().startswith(PRESENT_PREFIX)]
    if len(past) != len(present):
        raise ValueError(f"the decoder graph has {len(past)} past inputs but {len(present)} present outputs")
    return past, present


def add_beam_index(model, past: list[str]) -> None:
    """A ``beam_idx`` input, and a Gather of each cache input's batch rows by it."""
    import openvino as ov
    from openvino import opset13

    batch = model.input("input_ids").get_partial_shape()[0]
    beam_idx = opset13.parameter(name=BEAM_INPUT, dtype=ov.Type.i32, shape=ov.PartialShape([batch]))
    beam_idx.output(0).get_tensor().add_names({BEAM_INPUT})
    model.add_parameters([beam_idx])
    for name in past:
        port = model.input(name)
        consumers = port.get_target_inputs()
        gathered = opset13.gather(port, beam_idx, opset13.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(gathered.output(0))
    model.validate_nodes_and_infer_types()


def zero_length_initial_state(model) -> None:
    """Each variable starts as zeros shaped [batch of input_ids, heads, 0, head dim]: the static
    dims from the variable's shape, the dynamic ones at their minimum (0 for the sequence)."""
    from openvino import opset13

    batch = opset13.gather(opset13.shape_of(model.input("input_ids"), output_type="i64"),
                           opset13.constant([0]), opset13.constant(0))
    for op in model.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        dims = [dim.min_length for dim in op.get_output_partial_shape(0)]
        parts = [batch, *(opset13.constant(np.array([dim], dtype=np.int64)) for dim in dims[1:])]
        zero = opset13.constant(0.0, dtype=op.get_output_element_type(0))
        op.set_arguments([opset13.broadcast(zero, opset13.concat(parts, axis=0))])
    model.validate_nodes_and_infer_types()


def make_stateful(model) -> bool:
    """Turn ``model`` (an ov.Model, in place) stateful; False, unchanged, when it has no KV cache."""
    from openvino._offline_transformations import apply_make_stateful_transformation

    past, present = cache_names(model)
    if not past:
        return False
    add_beam_index(model, past)
    apply_make_stateful_transformation(model, dict(zip(past, present)))
    zero_length_initial_state(model)
    return True
