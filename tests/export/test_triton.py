"""Triton model repository writer: every config.pbtxt parsed against Triton's ModelConfig schema.

The schema is the subset of Triton's ``inference.ModelConfig`` (common repository,
``protobuf/model_config.proto``) that the writer can produce, built at test time as protobuf message
classes with the exact field names, numbers and types of the real file: ``text_format.Parse`` then
refuses unknown fields, wrong enum names and wrong value types, as Triton would.
"""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from nst_deploy.export.triton import write_triton_repo

from nst_deploy.errors import NSTError

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_STRING, _INT32, _INT64, _UINT32, _UINT64, _BOOL = (_F.TYPE_STRING, _F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_UINT32,
                                                      _F.TYPE_UINT64, _F.TYPE_BOOL)
_MSG, _ENUM = _F.TYPE_MESSAGE, _F.TYPE_ENUM

# Checked against triton-inference-server/common protobuf/model_config.proto (2018-2024 header).
_DATA_TYPES = ["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
               "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING",
               "TYPE_BF16"]  # numbered 0..14 in this order


def _field(msg, name, number, ftype, label=_OPT, type_name=None, oneof=None):
    f = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = type_name
    if oneof is not None:
        f.oneof_index = oneof
    return f


def _enum(parent, name, values):
    e = parent.add()
    e.name = name
    for number, value in values:
        e.value.add(name=value, number=number)


def _map_entry(msg, entry_name, value_type, value_type_name=None):
    entry = msg.nested_type.add(name=entry_name)
    entry.options.map_entry = True
    _field(entry, "key", 1, _STRING)
    _field(entry, "value", 2, value_type, type_name=value_type_name)
    return entry


def _schema_file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name="nst_test/triton_model_config_subset.proto", package="inference",
                                            syntax="proto3")
    _enum(fd.enum_type, "DataType", list(enumerate(_DATA_TYPES)))

    m = fd.message_type.add(name="ModelInstanceGroup")
    _enum(m.enum_type, "Kind", [(0, "KIND_AUTO"), (1, "KIND_GPU"), (2, "KIND_CPU"), (3, "KIND_MODEL")])
    _field(m, "name", 1, _STRING)
    _field(m, "kind", 4, _ENUM, type_name=".inference.ModelInstanceGroup.Kind")
    _field(m, "count", 2, _INT32)
    _field(m, "gpus", 3, _INT32, _REP)
    _field(m, "profile", 5, _STRING, _REP)
    _field(m, "passive", 7, _BOOL)
    _field(m, "host_policy", 9, _STRING)

    m = fd.message_type.add(name="ModelTensorReshape")
    _field(m, "shape", 1, _INT64, _REP)

    m = fd.message_type.add(name="ModelInput")
    _enum(m.enum_type, "Format", [(0, "FORMAT_NONE"), (1, "FORMAT_NHWC"), (2, "FORMAT_NCHW")])
    _field(m, "name", 1, _STRING)
    _field(m, "data_type", 2, _ENUM, type_name=".inference.DataType")
    _field(m, "format", 3, _ENUM, type_name=".inference.ModelInput.Format")
    _field(m, "dims", 4, _INT64, _REP)
    _field(m, "reshape", 5, _MSG, type_name=".inference.ModelTensorReshape")
    _field(m, "is_shape_tensor", 6, _BOOL)
    _field(m, "allow_ragged_batch", 7, _BOOL)
    _field(m, "optional", 8, _BOOL)

    m = fd.message_type.add(name="ModelOutput")
    _field(m, "name", 1, _STRING)
    _field(m, "data_type", 2, _ENUM, type_name=".inference.DataType")
    _field(m, "dims", 3, _INT64, _REP)
    _field(m, "reshape", 5, _MSG, type_name=".inference.ModelTensorReshape")
    _field(m, "label_filename", 4, _STRING)
    _field(m, "is_shape_tensor", 6, _BOOL)

    m = fd.message_type.add(name="ModelVersionPolicy")
    latest = m.nested_type.add(name="Latest")
    _field(latest, "num_versions", 1, _UINT32)
    m.nested_type.add(name="All")
    specific = m.nested_type.add(name="Specific")
    _field(specific, "versions", 1, _INT64, _REP)
    m.oneof_decl.add(name="policy_choice")
    _field(m, "latest", 1, _MSG, type_name=".inference.ModelVersionPolicy.Latest", oneof=0)
    _field(m, "all", 2, _MSG, type_name=".inference.ModelVersionPolicy.All", oneof=0)
    _field(m, "specific", 3, _MSG, type_name=".inference.ModelVersionPolicy.Specific", oneof=0)

    m = fd.message_type.add(name="ModelOptimizationPolicy")
    graph = m.nested_type.add(name="Graph")
    _field(graph, "level", 1, _INT32)
    _enum(m.enum_type, "ModelPriority", [(0, "PRIORITY_DEFAULT"), (1, "PRIORITY_MAX"), (2, "PRIORITY_MIN")])
    accels = m.nested_type.add(name="ExecutionAccelerators")
    acc = accels.nested_type.add(name="Accelerator")
    _field(acc, "name", 1, _STRING)
    _map_entry(acc, "ParametersEntry", _STRING)
    _field(acc, "parameters", 2, _MSG, _REP,
           ".inference.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator.ParametersEntry")
    acc_type = ".inference.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator"
    _field(accels, "gpu_execution_accelerator", 1, _MSG, _REP, acc_type)
    _field(accels, "cpu_execution_accelerator", 2, _MSG, _REP, acc_type)
    _field(m, "graph", 1, _MSG, type_name=".inference.ModelOptimizationPolicy.Graph")
    _field(m, "priority", 2, _ENUM, type_name=".inference.ModelOptimizationPolicy.ModelPriority")
    _field(m, "execution_accelerators", 4, _MSG,
           type_name=".inference.ModelOptimizationPolicy.ExecutionAccelerators")

    m = fd.message_type.add(name="ModelQueuePolicy")
    _enum(m.enum_type, "TimeoutAction", [(0, "REJECT"), (1, "DELAY")])
    _field(m, "timeout_action", 1, _ENUM, type_name=".inference.ModelQueuePolicy.TimeoutAction")
    _field(m, "default_timeout_microseconds", 2, _UINT64)
    _field(m, "allow_timeout_override", 3, _BOOL)
    _field(m, "max_queue_size", 4, _UINT32)

    m = fd.message_type.add(name="ModelDynamicBatching")
    _field(m, "preferred_batch_size", 1, _INT32, _REP)
    _field(m, "max_queue_delay_microseconds", 2, _UINT64)
    _field(m, "preserve_ordering", 3, _BOOL)
    _field(m, "priority_levels", 4, _UINT64)
    _field(m, "default_priority_level", 5, _UINT64)
    _field(m, "default_queue_policy", 6, _MSG, type_name=".inference.ModelQueuePolicy")

    m = fd.message_type.add(name="ModelParameter")
    _field(m, "string_value", 1, _STRING)

    m = fd.message_type.add(name="ModelConfig")
    _field(m, "name", 1, _STRING)
    _field(m, "platform", 2, _STRING)
    _field(m, "backend", 17, _STRING)
    _field(m, "runtime", 25, _STRING)
    _field(m, "version_policy", 3, _MSG, type_name=".inference.ModelVersionPolicy")
    _field(m, "max_batch_size", 4, _INT32)
    _field(m, "input", 5, _MSG, _REP, ".inference.ModelInput")
    _field(m, "output", 6, _MSG, _REP, ".inference.ModelOutput")
    _field(m, "optimization", 12, _MSG, type_name=".inference.ModelOptimizationPolicy")
    m.oneof_decl.add(name="scheduling_choice")
    _field(m, "dynamic_batching", 11, _MSG, type_name=".inference.ModelDynamicBatching", oneof=0)
    _field(m, "instance_group", 7, _MSG, _REP, ".inference.ModelInstanceGroup")
    _field(m, "default_model_filename", 8, _STRING)
    _map_entry(m, "CcModelFilenamesEntry", _STRING)
    _field(m, "cc_model_filenames", 9, _MSG, _REP, ".inference.ModelConfig.CcModelFilenamesEntry")
    _map_entry(m, "MetricTagsEntry", _STRING)
    _field(m, "metric_tags", 10, _MSG, _REP, ".inference.ModelConfig.MetricTagsEntry")
    _map_entry(m, "ParametersEntry", _MSG, ".inference.ModelParameter")
    _field(m, "parameters", 14, _MSG, _REP, ".inference.ModelConfig.ParametersEntry")
    return fd


@pytest.fixture(scope="module")
def schema():
    """``(ModelConfig class, pool)`` built from the subset above in a private descriptor pool."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_schema_file())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig")), pool


def _parse(schema, path):
    config_cls, _ = schema
    return text_format.Parse(path.read_text(encoding="utf-8"), config_cls())


def _enum_name(pool, enum, number):
    return pool.FindEnumTypeByName(enum).values_by_number[number].name


def _artifacts(tmp_path, *fmts):
    files = {"onnx": ("model.onnx", b"\x08\x09onnx-bytes\x00\xff" * 7),
             "torchscript": ("model.pt", b"PK\x03\x04torchscript\x00\x01" * 5)}
    out = {}
    for fmt in fmts:
        path = tmp_path / "export" / files[fmt][0]
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(files[fmt][1])
        out[fmt] = path
    return out


def test_schema_accepts_a_documented_triton_config_and_refuses_unknown_fields(schema):
    # The schema itself: Triton's documented examples parse; made-up fields and enum names do not.
    config_cls, _ = schema
    text_format.Parse('platform: "tensorrt_plan" max_batch_size: 8 input [ { name: "input0" data_type: TYPE_FP32 '
                      'dims: [ 16 ] } ] output [ { name: "output0" data_type: TYPE_FP32 dims: [ 16 ] } ] '
                      'instance_group [ { count: 2 kind: KIND_CPU } ] dynamic_batching { }', config_cls())
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "m" dynamic_batch { }', config_cls())
    with pytest.raises(text_format.ParseError):
        text_format.Parse('instance_group [ { kind: KIND_TPU } ]', config_cls())
    with pytest.raises(text_format.ParseError):
        text_format.Parse('input [ { data_type: FP32 } ]', config_cls())


def test_dynamic_onnx_and_torchscript(schema, tmp_path):
    _, pool = schema
    arts = _artifacts(tmp_path, "onnx", "torchscript")
    meta = {"style": 'starry "night".jpg', "arch": "johnson", "toolkit": "0.1.0", "config": {"width": 1.0}}
    out = write_triton_repo(tmp_path / "repo", "starry", arts, meta=meta)
    assert set(out["models"]) == {"onnx", "torchscript"} and out["repo"] == str(tmp_path / "repo")

    onnx = out["models"]["onnx"]
    assert onnx["dir"] == str(tmp_path / "repo" / "starry")
    cfg = _parse(schema, tmp_path / "repo" / "starry" / "config.pbtxt")
    assert cfg.name == "starry" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 8
    (inp,), (outp,) = cfg.input, cfg.output
    assert inp.name == "image" and outp.name == "stylized"
    assert _enum_name(pool, "inference.DataType", inp.data_type) == "TYPE_FP32" == \
        _enum_name(pool, "inference.DataType", outp.data_type)
    assert list(inp.dims) == [3, -1, -1] and list(outp.dims) == [3, -1, -1]
    (group,) = cfg.instance_group
    assert group.count == 1 and _enum_name(pool, "inference.ModelInstanceGroup.Kind", group.kind) == "KIND_GPU"
    # Triton batches only same-shape requests, so dynamic batching is on for dynamic sizes too.
    assert cfg.HasField("dynamic_batching")
    assert cfg.version_policy.WhichOneof("policy_choice") == "latest" and cfg.version_policy.latest.num_versions == 1
    assert not cfg.HasField("optimization")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["nst_style"] == 'starry "night".jpg' and params["nst_arch"] == "johnson"
    assert params["nst_toolkit"] == "0.1.0" and "nst_config" not in params
    assert (tmp_path / "repo" / "starry" / "1" / "model.onnx").read_bytes() == arts["onnx"].read_bytes()
    assert onnx["model"] == str(tmp_path / "repo" / "starry" / "1" / "model.onnx")

    ts = out["models"]["torchscript"]
    assert ts["name"] == "starry_torchscript"
    cfg = _parse(schema, tmp_path / "repo" / "starry_torchscript" / "config.pbtxt")
    assert cfg.name == "starry_torchscript" and cfg.platform == "pytorch_libtorch"
    # LibTorch backend naming convention: <name>__<index>.
    assert [i.name for i in cfg.input] == ["INPUT__0"] and [o.name for o in cfg.output] == ["OUTPUT__0"]
    assert list(cfg.input[0].dims) == [3, -1, -1] and cfg.parameters["nst_style"].string_value == meta["style"]
    assert (tmp_path / "repo" / "starry_torchscript" / "1" / "model.pt").read_bytes() == \
        arts["torchscript"].read_bytes()
    assert sorted(p.name for p in (tmp_path / "repo" / "starry_torchscript").rglob("*")) == \
        ["1", "config.pbtxt", "model.pt"]


@pytest.mark.parametrize("scale", [1, 4])
def test_static_size_fp16_cpu(schema, tmp_path, scale):
    _, pool = schema
    out = write_triton_repo(tmp_path / "repo", "mm-x4.v1", _artifacts(tmp_path, "onnx"), io_dtype="fp16",
                            static_hw=(256, 384), output_scale=scale, max_batch_size=4, instances=3, kind="cpu",
                            meta={"style": "café ☕.png"})
    cfg = _parse(schema, tmp_path / "repo" / "mm-x4.v1" / "config.pbtxt")
    assert list(out["models"]) == ["onnx"] and cfg.max_batch_size == 4
    assert list(cfg.input[0].dims) == [3, 256, 384] and list(cfg.output[0].dims) == [3, 256 * scale, 384 * scale]
    assert {_enum_name(pool, "inference.DataType", t.data_type) for t in (cfg.input[0], cfg.output[0])} == \
        {"TYPE_FP16"}
    (group,) = cfg.instance_group
    assert group.count == 3 and _enum_name(pool, "inference.ModelInstanceGroup.Kind", group.kind) == "KIND_CPU"
    assert cfg.HasField("dynamic_batching")
    assert cfg.parameters["nst_style"].string_value == "café ☕.png"


def test_no_batching_puts_the_batch_dimension_in_dims(schema, tmp_path):
    write_triton_repo(tmp_path / "repo", "m", _artifacts(tmp_path, "onnx", "torchscript"), max_batch_size=0)
    for model in ("m", "m_torchscript"):
        cfg = _parse(schema, tmp_path / "repo" / model / "config.pbtxt")
        assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
        assert list(cfg.input[0].dims) == [-1, 3, -1, -1] and list(cfg.output[0].dims) == [-1, 3, -1, -1]


def test_tensorrt_fp16_hint_on_the_onnx_model_only(schema, tmp_path):
    write_triton_repo(tmp_path / "repo", "m", _artifacts(tmp_path, "onnx", "torchscript"), tensorrt_fp16=True)
    cfg = _parse(schema, tmp_path / "repo" / "m" / "config.pbtxt")
    (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt" and dict(acc.parameters) == {"precision_mode": "FP16"}
    assert not _parse(schema, tmp_path / "repo" / "m_torchscript" / "config.pbtxt").HasField("optimization")
    with pytest.raises(NSTError, match="GPU"):
        write_triton_repo(tmp_path / "repo", "m", _artifacts(tmp_path, "onnx"), tensorrt_fp16=True, kind="cpu")


def test_rewrite_overwrites_our_files_and_keeps_nothing_stale(schema, tmp_path):
    arts = _artifacts(tmp_path, "onnx")
    write_triton_repo(tmp_path / "repo", "m", arts, max_batch_size=2)
    arts["onnx"].write_bytes(b"new model")
    leftover = tmp_path / "repo" / "m" / "1" / ".model.onnx.k2j4_x.tmp"  # an interrupted atomic write of ours
    leftover.write_bytes(b"partial")
    write_triton_repo(tmp_path / "repo", "m", arts, max_batch_size=5)
    assert _parse(schema, tmp_path / "repo" / "m" / "config.pbtxt").max_batch_size == 5
    assert (tmp_path / "repo" / "m" / "1" / "model.onnx").read_bytes() == b"new model"
    assert leftover.exists()  # tolerated, not deleted
    leftover.unlink()
    assert sorted(p.name for p in (tmp_path / "repo" / "m").rglob("*")) == ["1", "config.pbtxt", "model.onnx"]


def test_user_files_in_the_way_are_refused_and_kept(tmp_path):
    arts = _artifacts(tmp_path, "onnx", "torchscript")
    (tmp_path / "repo" / "m" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "notes.txt").write_text("mine")
    with pytest.raises(NSTError, match="notes.txt"):
        write_triton_repo(tmp_path / "repo", "m", arts)
    assert (tmp_path / "repo" / "m" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "repo" / "m_torchscript").exists()  # checked before anything is written

    (tmp_path / "repo" / "m_torchscript" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "m_torchscript" / "1" / "model.onnx").write_bytes(b"x")  # not the file we write there
    with pytest.raises(NSTError, match="model.onnx"):
        write_triton_repo(tmp_path / "repo", "m", {"torchscript": arts["torchscript"]})
    (tmp_path / "repo" / "file").write_text("x")
    with pytest.raises(NSTError, match="not a folder"):
        write_triton_repo(tmp_path / "repo", "file", arts)


@pytest.mark.parametrize(("name", "kwargs", "match"), [
    ("../evil", {}, "not allowed"),
    (".hidden", {}, "not allowed"),
    ("a b", {}, "not allowed"),
    ("", {}, "not allowed"),
    ("m", {"max_batch_size": -1}, "max_batch_size"),
    ("m", {"instances": 0}, "instances"),
    ("m", {"kind": "tpu"}, "kind"),
    ("m", {"io_dtype": "bf16"}, "dtype"),
    ("m", {"static_hw": (0, 64)}, "height"),
    ("m", {"output_scale": 0}, "output_scale"),
])
def test_bad_arguments(tmp_path, name, kwargs, match):
    with pytest.raises(NSTError, match=match):
        write_triton_repo(tmp_path / "repo", name, _artifacts(tmp_path, "onnx"), **kwargs)
    assert not (tmp_path / "repo").exists()


def test_bad_artifacts(tmp_path):
    with pytest.raises(NSTError, match="no artifacts"):
        write_triton_repo(tmp_path / "repo", "m", {})
    with pytest.raises(NSTError, match="unknown format tflite"):
        write_triton_repo(tmp_path / "repo", "m", {"tflite": tmp_path / "m.tflite"})
    with pytest.raises(NSTError, match="does not exist"):
        write_triton_repo(tmp_path / "repo", "m", {"onnx": tmp_path / "missing.onnx"})


def test_python_backend_models_for_nst_serve_and_nst_export(schema, tmp_path):
    from nst_deploy.export.triton import write_serve_model

    config_cls, pool = schema
    arts = _artifacts(tmp_path, "onnx")
    out = write_triton_repo(tmp_path / "repo", "starry", arts, python=True, kind="cpu", n_styles=3, max_pixels=4096)
    py = out["models"]["python"]
    assert py["name"] == "starry_python" and (tmp_path / "repo" / "starry_python" / "1" / "model.py").is_file()
    assert (tmp_path / "repo" / "starry_python" / "1" / "model.onnx").read_bytes() == arts["onnx"].read_bytes()
    cfg = _parse(schema, tmp_path / "repo" / "starry_python" / "config.pbtxt")
    assert cfg.backend == "python" and not cfg.platform
    assert [i.name for i in cfg.input] == ["image", "style"] and cfg.input[1].optional
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["nst_runtime"] == "onnxruntime" and params["nst_model"] == "model.onnx"
    assert params["nst_max_pixels"] == "4096" and params["nst_n_styles"] == "3"
    with pytest.raises(NSTError, match="onnx artifact"):
        write_triton_repo(tmp_path / "r2", "m", _artifacts(tmp_path, "torchscript"), python=True)

    model = tmp_path / "export" / "model.onnx"
    d = write_serve_model(tmp_path / "serve", "starry", model, fallback=model, max_batch_size=4,
                          max_queue_delay_us=2000, timeout_us=5_000_000, instances=2, max_pixels=10_000,
                          memory_mb=512.0, threads=1)
    cfg = _parse(schema, tmp_path / "serve" / "starry" / "config.pbtxt")
    assert d.endswith("starry") and cfg.backend == "python" and cfg.max_batch_size == 4
    assert cfg.instance_group[0].count == 2 and _enum_name(pool, "inference.ModelInstanceGroup.Kind",
                                                           cfg.instance_group[0].kind) == "KIND_CPU"
    q = cfg.dynamic_batching
    assert q.max_queue_delay_microseconds == 2000 and q.default_queue_policy.default_timeout_microseconds == 5_000_000
    assert q.default_queue_policy.allow_timeout_override
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["nst_runtime"] == "stylizer" and params["nst_model"] == str(model.resolve())
    assert params["nst_fallback"] == str(model.resolve()) and params["nst_threads"] == "1"
    write_serve_model(tmp_path / "serve", "plain", model, dynamic_batching=False, timeout_us=1000)
    q = _parse(schema, tmp_path / "serve" / "plain" / "config.pbtxt").dynamic_batching
    assert list(q.preferred_batch_size) == [1] and q.default_queue_policy.default_timeout_microseconds == 1000
    with pytest.raises(NSTError, match="does not exist"):
        write_serve_model(tmp_path / "serve", "gone", tmp_path / "nothing.onnx")
