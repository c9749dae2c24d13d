"""Contract tests of the clients against fixed answers shaped like each documented and observed
variant (docs/models.md), served by httpx.MockTransport to the real clients."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import re
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx
import nibabel as nib
import numpy as np
import pytest
from pydantic import SecretStr

from listener.errors import PermanentModelError
from listener.infer import (
    CxrReportGenClient,
    MedImageInsightClient,
    MedImageParse3DClient,
    MedImageParseClient,
    ModelTransport,
)
from listener.settings import ModelSettings

ENDPOINT = "https://demo.westeurope.inference.ml.azure.com/score"
T = TypeVar("T")
REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


class FixedEndpoint:
    """Answers every request with the next canned body and records what was sent."""

    def __init__(self, *bodies: Any) -> None:
        self.bodies = list(bodies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = self.bodies.pop(0) if len(self.bodies) > 1 else self.bodies[0]
        return httpx.Response(200, json=body)

    def sent(self, number: int = 0) -> Any:
        return json.loads(self.requests[number].content)


def transport(model: str, endpoint: FixedEndpoint, **settings: Any) -> ModelTransport:
    """A transport for ``model`` talking to the fixed-answer endpoint."""
    options: dict[str, Any] = {"endpoint": ENDPOINT, "key": SecretStr("secret-key")}
    options.update(settings)
    return ModelTransport(
        model,
        ModelSettings(**options),
        http=httpx.AsyncClient(transport=httpx.MockTransport(endpoint)),
    )


def run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion."""
    return asyncio.run(make())


def unit(seed: int) -> list[float]:
    """A random unit vector of the embedding size."""
    vector = np.random.default_rng(seed).standard_normal(1024)
    return [float(v) for v in (vector / np.linalg.norm(vector)).astype(np.float32)]


def serialized(array: np.ndarray[Any, Any]) -> dict[str, Any]:
    """An array as the model serializes it (base64 data, shape, dtype)."""
    data = base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()
    return {"data": data, "shape": list(array.shape), "dtype": str(array.dtype)}


def test_mi_request_is_the_documented_envelope_with_headers(png: Callable[..., bytes]) -> None:
    """Image embeddings go in batches of batch_size as image-only rows with MIME base64, index
    0..n-1, get_scaling_factor, the key as bearer, the deployment and a client request id."""
    images = [png(np.full((8, 8), value)) for value in (10, 20, 30)]
    answer = {"image_features": [unit(1)], "scaling_factor": 4.5}
    endpoint = FixedEndpoint([answer, answer], [answer])
    client = MedImageInsightClient(
        transport("medimageinsight", endpoint, deployment="mi-v1"), batch_size=2
    )
    result = run(lambda: client.embed_images(images))
    assert len(result) == 3
    first, second = endpoint.sent(0), endpoint.sent(1)
    assert first["input_data"]["columns"] == ["image", "text"]
    assert first["input_data"]["index"] == [0, 1] and second["input_data"]["index"] == [0]
    assert first["params"] == {"get_scaling_factor": True}
    row = first["input_data"]["data"][0]
    assert row[1] == "" and row[0].endswith("\n")
    assert base64.decodebytes(row[0].encode()) == images[0]
    headers = endpoint.requests[0].headers
    assert headers["authorization"] == "Bearer secret-key"
    assert headers["azureml-model-deployment"] == "mi-v1"
    assert headers["content-type"] == "application/json"
    assert REQUEST_ID.match(headers["x-ms-client-request-id"])
    assert (
        headers["x-ms-client-request-id"] != endpoint.requests[1].headers["x-ms-client-request-id"]
    )


def test_mi_text_rows_are_text_only() -> None:
    """Text embeddings are sent as rows with an empty image and the text as given."""
    endpoint = FixedEndpoint([{"text_features": unit(2)}])
    client = MedImageInsightClient(transport("medimageinsight", endpoint), batch_size=8)
    result = run(lambda: client.embed_texts(["x-ray chest anteroposterior Atelectasis."]))
    assert endpoint.sent()["input_data"]["data"] == [
        ["", "x-ray chest anteroposterior Atelectasis."]
    ]
    assert result[0].image is None and result[0].text is not None


MI_VARIANTS = {
    "observed: array, nested image, flat text": [
        {"image_features": [unit(1)], "text_features": unit(2), "scaling_factor": 4.513362}
    ],
    "documented: bare object, nested both": {
        "image_features": [unit(1)],
        "text_features": [unit(2)],
        "scaling_factor": 4.513362,
    },
    "array, flat image, nested text": [
        {"image_features": unit(1), "text_features": [unit(2)], "scaling_factor": 4.513362}
    ],
}


@pytest.mark.parametrize("variant", sorted(MI_VARIANTS))
def test_mi_answer_variants_parse_alike(variant: str, png: Callable[..., bytes]) -> None:
    """Every MedImageInsight answer shape yields the same squeezed 1024-float vectors."""
    endpoint = FixedEndpoint(MI_VARIANTS[variant])
    client = MedImageInsightClient(transport("medimageinsight", endpoint), batch_size=8)
    (answer,) = run(lambda: client._embed([["aW1n", "text"]]))
    assert answer.image is not None and answer.text is not None
    assert answer.image.shape == (1024,) and answer.text.shape == (1024,)
    np.testing.assert_allclose(answer.image, unit(1), rtol=1e-6)
    np.testing.assert_allclose(answer.text, unit(2), rtol=1e-6)
    assert answer.scaling_factor == pytest.approx(4.513362)


def test_mi_missing_scaling_factor_and_multi_row_bare_object(png: Callable[..., bytes]) -> None:
    """A bare object holding several rows' vectors is split per row; a missing scaling_factor
    (as in the 2024-11 recording) reads as None."""
    endpoint = FixedEndpoint({"image_features": [unit(1), unit(3)]})
    client = MedImageInsightClient(transport("medimageinsight", endpoint), batch_size=8)
    answers = run(lambda: client.embed_images([png(np.zeros((4, 4))), png(np.ones((4, 4)))]))
    np.testing.assert_allclose(answers[1].image, unit(3), rtol=1e-6)
    assert answers[0].scaling_factor is None and answers[0].text is None


def test_cxr_columns_follow_the_official_client(png: Callable[..., bytes]) -> None:
    """Columns are frontal_image, indication, technique, comparison ("None" by default), then
    lateral_image, prior_image and prior_report only when given; params is {}."""
    endpoint = FixedEndpoint([{"output": "[]"}])
    client = CxrReportGenClient(transport("cxrreportgen", endpoint))
    frontal = png(np.zeros((16, 16)))
    run(lambda: client.generate(frontal, indication="Cough"))
    sent = endpoint.sent()
    assert sent["input_data"]["columns"] == [
        "frontal_image",
        "indication",
        "technique",
        "comparison",
    ]
    assert sent["input_data"]["data"][0][1:] == ["Cough", "", "None"]
    assert sent["params"] == {} and sent["input_data"]["index"] == [0]
    run(lambda: client.generate(frontal, lateral=frontal, prior=frontal, prior_report="Normal."))
    assert endpoint.sent(1)["input_data"]["columns"] == [
        "frontal_image",
        "indication",
        "technique",
        "comparison",
        "lateral_image",
        "prior_image",
        "prior_report",
    ]


CXR_FINDINGS = [
    ["The heart size is normal.", None],
    ["The aorta is tortuous.", [[0.415, 0.225, 0.635, 0.755]]],
    ["A small right pleural effusion is present.", [[0.115, 0.555, 0.425, 0.845]]],
]
CXR_VARIANTS = {
    "observed: array, output as JSON string": [{"output": json.dumps(CXR_FINDINGS)}],
    "documented: bare object, output as list": {"output": CXR_FINDINGS},
    "array, output as list": [{"output": CXR_FINDINGS}],
}


@pytest.mark.parametrize("variant", sorted(CXR_VARIANTS))
def test_cxr_answer_variants_parse_alike(variant: str, png: Callable[..., bytes]) -> None:
    """Every CXRReportGen answer shape yields the same findings and normalized boxes."""
    client = CxrReportGenClient(transport("cxrreportgen", FixedEndpoint(CXR_VARIANTS[variant])))
    report = run(lambda: client.generate(png(np.zeros((16, 16)))))
    assert [finding.text for finding in report.findings] == [f[0] for f in CXR_FINDINGS]
    assert report.findings[0].boxes == ()
    box = report.findings[1].boxes[0]
    assert (box.x_min, box.y_min, box.x_max, box.y_max) == (0.415, 0.225, 0.635, 0.755)


def parse_masks() -> np.ndarray[Any, Any]:
    """Two small masks as MedImageParse returns them."""
    masks = np.zeros((2, 1024, 1024), dtype=np.uint8)
    masks[0, 100:200, 300:400] = 255
    masks[1, 500:900, 10:20] = 255
    return masks


PARSE_VARIANTS = {
    "observed: image_features as JSON string": [
        {
            "image_features": json.dumps(serialized(parse_masks())),
            "text_features": ["lung", "tumor"],
        }
    ],
    "image_features as object, bare answer": {
        "image_features": serialized(parse_masks()),
        "text_features": ["lung", "tumor"],
    },
    "boolean masks": [
        {
            "image_features": json.dumps(serialized(parse_masks() > 0)),
            "text_features": ["lung", "tumor"],
        }
    ],
}


@pytest.mark.parametrize("variant", sorted(PARSE_VARIANTS))
def test_parse_answer_variants_parse_alike(variant: str, parse_png: bytes) -> None:
    """Every MedImageParse answer shape yields the same 0/255 masks and categories; the prompts
    go out joined with " & "."""
    endpoint = FixedEndpoint(PARSE_VARIANTS[variant])
    client = MedImageParseClient(transport("medimageparse", endpoint))
    result = run(lambda: client.segment(parse_png, ["left lung ", "tumor"]))
    assert endpoint.sent()["input_data"]["data"][0][1] == "left lung & tumor"
    assert result.prompts == ("left lung", "tumor")
    assert result.categories == ("lung", "tumor")
    assert result.masks.dtype == np.uint8
    np.testing.assert_array_equal(result.masks, parse_masks())


def test_parse_rejects_a_mask_count_that_does_not_match_the_prompts(parse_png: bytes) -> None:
    """An answer with fewer masks than prompts is a permanent error naming the model."""
    body = [
        {"image_features": json.dumps(serialized(parse_masks()[:1])), "text_features": ["lung"]}
    ]
    client = MedImageParseClient(transport("medimageparse", FixedEndpoint(body)))
    with pytest.raises(PermanentModelError, match="medimageparse endpoint: masks"):
        run(lambda: client.segment(parse_png, ["lung", "tumor"]))


def label_volume() -> np.ndarray[Any, Any]:
    """A small label volume as MedImageParse 3D returns it."""
    labels = np.zeros((10, 12, 8), dtype=np.uint8)
    labels[2:5, 3:9, 1:4] = 1
    labels[6:9, 1:4, 5:7] = 2
    return labels


def nifti_b64(labels: np.ndarray[Any, Any]) -> str:
    """A label volume as a base64 NIfTI file."""
    image = nib.Nifti1Image(labels, np.diag([0.8, 0.8, 2.5, 1.0]))
    return base64.b64encode(gzip.compress(image.to_bytes())).decode()


def unmerged_masks() -> np.ndarray[Any, Any]:
    """The unmerged branch's (N, D, H, W) masks for the same labels."""
    zyx = np.transpose(label_volume(), (2, 1, 0))
    return np.stack([(zyx == 1), (zyx == 2)]).astype(np.uint8)


PARSE3D_VARIANTS = {
    "documented: nifti_file as JSON string": [
        {"nifti_file": json.dumps({"data": nifti_b64(label_volume())})}
    ],
    "nifti_file as object": [{"nifti_file": {"data": nifti_b64(label_volume())}}],
    "unmerged branch: image_features (N, D, H, W)": [
        {"image_features": json.dumps(serialized(unmerged_masks())), "text_features": ["a", "b"]}
    ],
}


@pytest.mark.parametrize("variant", sorted(PARSE3D_VARIANTS))
def test_parse3d_answer_variants_parse_alike(variant: str, nifti_gz: bytes) -> None:
    """Every MedImageParse 3D answer shape yields the same (x, y, z) label volume."""
    endpoint = FixedEndpoint(PARSE3D_VARIANTS[variant])
    client = MedImageParse3DClient(transport("medimageparse3d", endpoint))
    result = run(lambda: client.segment(nifti_gz, ["liver", "spleen"]))
    sent = endpoint.sent()["input_data"]
    assert sent["columns"] == ["image", "text"] and sent["data"][0][1] == "liver & spleen"
    assert base64.decodebytes(sent["data"][0][0].encode()) == nifti_gz
    np.testing.assert_array_equal(result.labels, label_volume())
    assert result.prompts == ("liver", "spleen")


def test_parse3d_keeps_the_answer_affine(nifti_gz: bytes) -> None:
    """The label volume's affine comes from the returned NIfTI header."""
    body = [{"nifti_file": json.dumps({"data": nifti_b64(label_volume())})}]
    client = MedImageParse3DClient(transport("medimageparse3d", FixedEndpoint(body)))
    result = run(lambda: client.segment(nifti_gz, ["liver"]))
    np.testing.assert_allclose(np.diag(result.affine), [0.8, 0.8, 2.5, 1.0])


@pytest.mark.parametrize(
    "body",
    [{"unexpected": 1}, [{"output": "not json"}], [{"output": "[]"}, {"output": "[]"}], "text"],
)
def test_malformed_answers_are_permanent_errors(body: Any, png: Callable[..., bytes]) -> None:
    """An answer that breaks the contract raises PermanentModelError naming the model."""
    client = CxrReportGenClient(transport("cxrreportgen", FixedEndpoint(body)))
    with pytest.raises(PermanentModelError, match="malformed answer from cxrreportgen"):
        run(lambda: client.generate(png(np.zeros((8, 8)))))


def test_identity_comes_from_settings() -> None:
    """The identity names the model and the configured version, else deployment, else unknown."""
    endpoint = FixedEndpoint([])
    versioned = CxrReportGenClient(transport("cxrreportgen", endpoint, model_version="11"))
    deployed = CxrReportGenClient(transport("cxrreportgen", endpoint, deployment="cxr-v440"))
    plain = CxrReportGenClient(transport("cxrreportgen", endpoint))
    assert versioned.identity.version == "11" and not versioned.identity.emulated
    assert deployed.identity.version == "cxr-v440"
    assert plain.identity.version == "unknown" and plain.identity.name == "cxrreportgen"
