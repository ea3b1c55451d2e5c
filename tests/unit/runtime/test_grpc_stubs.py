"""The checked-in gRPC stubs are what hack/gen-grpc.py makes from the .proto now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("gen_grpc", ROOT / "hack" / "gen-grpc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checked_in_stubs_match_a_fresh_generation() -> None:
    gen = _generator()
    fresh = gen.render()  # type: ignore[attr-defined]
    package = ROOT / "operator" / gen.PACKAGE  # type: ignore[attr-defined]
    assert set(fresh) == {"grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi",
                          "grpc_predict_v2_pb2_grpc.py"}
    for name, text in fresh.items():
        assert (package / name).read_text() == text, (
            f"{name} is stale: run .venv/bin/python hack/gen-grpc.py")


def test_the_stubs_carry_the_protocol_field_numbers() -> None:
    # Wire compatibility with every V2 client rests on these numbers, not on names.
    from kustos.runtime.server.oip_grpc import grpc_predict_v2_pb2 as pb

    req = pb.ModelInferRequest.DESCRIPTOR
    assert req.full_name == "inference.ModelInferRequest"
    assert {f.name: f.number for f in req.fields} == {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "inputs": 5,
        "outputs": 6, "raw_input_contents": 7}
    resp = pb.ModelInferResponse.DESCRIPTOR
    assert {f.name: f.number for f in resp.fields} == {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "outputs": 5,
        "raw_output_contents": 6}
    contents = pb.InferTensorContents.DESCRIPTOR
    assert [f.name for f in sorted(contents.fields, key=lambda f: f.number)] == [
        "bool_contents", "int_contents", "int64_contents", "uint_contents",
        "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents"]
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert [m.name for m in service.methods] == [
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelInfer"]


def _fields(desc: object) -> dict[str, tuple[int, int, bool]]:
    return {f.name: (f.number, f.type, f.is_repeated)  # type: ignore[attr-defined]
            for f in desc.fields}  # type: ignore[attr-defined]


def test_every_message_is_wire_compatible_with_tritons_client() -> None:
    """Same package, and each field of ours has Triton's number, type and cardinality."""
    import tritonclient.grpc.service_pb2 as triton

    from kustos.runtime.server.oip_grpc import grpc_predict_v2_pb2 as pb

    assert pb.DESCRIPTOR.package == triton.DESCRIPTOR.package == "inference"
    pending = list(pb.DESCRIPTOR.message_types_by_name.values())
    checked = 0
    while pending:
        ours = pending.pop()
        pending.extend(ours.nested_types)
        theirs = triton.DESCRIPTOR.pool.FindMessageTypeByName(ours.full_name)
        mine, tri = _fields(ours), _fields(theirs)
        assert {n: tri.get(n) for n in mine} == mine, ours.full_name
        checked += 1
    assert checked >= 20
    service = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        twin = service.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            twin.input_type.full_name, twin.output_type.full_name)
