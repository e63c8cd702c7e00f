"""int8 ONNX models: ONNX Runtime static quantization (QDQ), calibrated on photographs, the quality drop
measured with the project's own measures and bounded.

:func:`quantize_int8` quantizes the convolutions between the first and the last (int8 weights per output
channel, uint8 activations with ranges from the calibration photographs); the layers that touch the
image (3 channels in or out) stay float32: measured on the 2-core development machine, ONNX Runtime's
int8 convolution is 3.4x faster than float32 on the 64-channel residual layers and slower on those
(its output or input channels leave most of the int8 kernel's lanes idle). Instance normalization,
padding and resizing stay float32 (ONNX Runtime has no int8 kernels for them).

:func:`int8_drift` runs the float32 and int8 models on photographs and measures, per photograph,
:func:`nst_deploy.quality.drift`: the share of the stylization lost (VGG19 Gram distance of the int8
output to the float32 one over the photo's), the content drift (relu4_2) and the PSNR. :data:`BOUNDS`
are the limits an export must meet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nst_deploy.contract import ONNX_INPUT, ONNX_OUTPUT, ONNX_STYLE
from nst_deploy.errors import NSTError

__all__ = ["BOUNDS", "CALIBRATION_SIZE", "calibration_images", "int8_drift", "quantize_int8"]

#: Limits of the int8 model's quality drop against the float32 one (worst photograph): the share of the
#: stylization lost (0 = the same style statistics, 1 = none left), the content drift, the PSNR in dB.
BOUNDS = {"style_drift": 0.10, "content_drift": 0.25, "psnr_db": 28.0}
#: Long side of the calibration images.
CALIBRATION_SIZE = 256
_BUNDLED_PHOTOS = ("chelsea.jpg", "coffee.jpg")


def _data_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "nst_deploy" / "data"


def _as_input(rgb: np.ndarray) -> np.ndarray:
    """An ``HxWx3`` float image in [0, 1] as a ``(1, 3, H, W)`` float32 batch."""
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=np.float32)


def calibration_images(folder: str | Path | None = None, size: int = CALIBRATION_SIZE, limit: int = 32) -> list:
    """``(1, 3, H, W)`` float32 photographs for calibration, long side ``size``: the images of ``folder``
    (at most ``limit``), else the bundled photographs, whole, mirrored and in four corner crops.

    Raises:
        NSTError: ``folder`` is not a folder or holds no readable image.
    """
    from PIL import Image

    from nst_deploy.imageio import read_rgb

    out = []
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise NSTError(f"calibration folder '{folder}' is not a folder")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
        for p in files[:limit]:
            try:
                out.append(_as_input(read_rgb(p, size=size)))
            except (NSTError, OSError, ValueError):
                continue
        if not out:
            raise NSTError(f"calibration folder '{folder}' holds no readable image (.jpg, .png, .webp)")
        return out
    for name in _BUNDLED_PHOTOS:
        im = Image.open(_data_dir() / name).convert("RGB")
        w, h = im.size
        views = [im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
        views += [im.crop(box) for box in ((0, 0, w * 2 // 3, h * 2 // 3), (w // 3, 0, w, h * 2 // 3),
                                           (0, h // 3, w * 2 // 3, h), (w // 3, h // 3, w, h))]
        for v in views:
            s = size / max(v.size)
            v = v.resize((max(8, round(v.size[0] * s)), max(8, round(v.size[1] * s))), Image.Resampling.BICUBIC)
            out.append(_as_input(np.asarray(v, np.float32) / 255.0))
    return out


def _feeds(images: list, n_styles: int):
    """Calibration feeds: each image, with a one-hot style vector cycling through a multistyle network's."""
    for i, x in enumerate(images):
        feed = {ONNX_INPUT: x}
        if n_styles:
            style = np.zeros((1, n_styles), np.float32)
            style[0, i % n_styles] = 1.0
            feed[ONNX_STYLE] = style
        yield feed


def quantize_int8(fp32: Path, out: Path, images: list, n_styles: int = 0) -> Path:
    """Write ``out``, the int8 (QDQ) form of the float32 ONNX model ``fp32``, calibrated on ``images``
    (``(1, 3, H, W)`` float32 arrays); its nst metadata is ``fp32``'s with ``"quantized": "int8"``.

    Raises:
        NSTError: onnxruntime's quantization tools are missing or fail.
    """
    import tempfile

    import onnx

    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise NSTError(f"int8 export needs onnxruntime's quantization tools: {e}") from None

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = _feeds(images, n_styles)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory(prefix="nst-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            # shape inference and constant folding (the float16-stored weights' Casts) for the quantizer
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
            # the layers that touch the image stay float32: the first, and the last (its space-to-depth form)
            keep = [convs[0], *[c for c in convs if c.endswith("__s2d_conv")], convs[-1]] if convs else []
            quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                            op_types_to_quantize=["Conv"], nodes_to_exclude=keep)
        except NSTError:
            raise
        except Exception as e:  # noqa: BLE001
            raise NSTError(f"int8 quantization failed: {str(e).strip().splitlines()[0][:200]}") from None
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    if "nst" in meta:
        nst = json.loads(meta["nst"])
        nst["quantized"] = "int8"
        meta["nst"] = json.dumps(nst)
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(out))
    return out


def int8_drift(fp32: Path, int8: Path, photos: list, n_styles: int = 0) -> dict:
    """The int8 model's quality drop against the float32 one on ``photos`` (``(1, 3, H, W)`` float32):
    per photograph :func:`nst_deploy.quality.drift`, and the worst of each measure."""
    import onnxruntime as ort
    import torch

    from nst_deploy.lossnets import load_lossnet
    from nst_deploy.quality import drift

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)]
    net = load_lossnet("vgg19", device="cpu")
    rows = []
    for feed in _feeds(photos, n_styles):
        ref, got = (np.clip(s.run([ONNX_OUTPUT], feed)[0], 0.0, 1.0) for s in sessions)
        rows.append(drift(torch.from_numpy(ref), torch.from_numpy(got), torch.from_numpy(feed[ONNX_INPUT]), net=net))
    worst = {"style_drift": max(r["style_drift"] for r in rows), "content_drift": max(r["content_drift"] for r in rows),
             "psnr_db": min(r["psnr_db"] for r in rows)}
    return {"worst": worst, "photos": rows}
