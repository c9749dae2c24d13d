"""The emulator's documented validation and fault injection, seen from a plain HTTP client."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from pydantic import SecretStr
from structlog.testing import capture_logs

from converters.model_outputs import PARSE_CATEGORIES
from listener.asgi import BackgroundServer
from listener.emulator import answers, start_emulator
from listener.emulator.answers import category
from listener.infer.wire import EMULATOR_HEADER, EMULATOR_NOTICE
from listener.settings import EmulatorSettings

Start = Callable[..., BackgroundServer]


def body(columns: list[str], rows: list[list[Any]], params: Any = None) -> dict[str, Any]:
    """A request body in the MLflow split format."""
    return {
        "input_data": {"columns": columns, "index": list(range(len(rows))), "data": rows},
        "params": params,
    }


def post(server: BackgroundServer, model: str, payload: Any, **headers: str) -> httpx.Response:
    """POST ``payload`` to a model's score path on the emulator."""
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return httpx.post(f"{server.url}/{model}/score", content=content, headers=headers, timeout=30)


def test_parse_rejects_an_image_that_is_not_1024_square(
    emulator: Start, png: Callable[..., bytes]
) -> None:
    """A MedImageParse image that is not 1024×1024 gets 424 with the model-error headers."""
    server = emulator()
    image = base64.encodebytes(png(np.zeros((512, 600)))).decode()
    answer = post(server, "medimageparse", body(["image", "text"], [[image, "liver"]]))
    assert answer.status_code == 424
    assert answer.headers["ms-azureml-model-error-statuscode"] == "400"
    reason = answer.headers["ms-azureml-model-error-reason"]
    assert "1024x1024" in reason and "got 600x512" in reason


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (b"{not json", "request body is not valid JSON"),
        ({"params": {}}, "missing field input_data"),
        ({"input_data": {"index": [0], "data": [["", "x"]]}}, "missing field input_data.columns"),
        ({"input_data": {"columns": ["image", "text"], "data": [["", "x"]]}}, "input_data.index"),
        ({"input_data": {"columns": ["image", "text"], "index": [0]}}, "input_data.data"),
        (body(["image", "txt"], [["", "x"]]), "input_data.columns: unknown"),
        (body(["image", "text"], [["", "x", "y"]]), "input_data.data[0] must hold 2 values"),
        (body(["image", "text"], [["", None]]), "input_data.data[0]: neither image nor text"),
    ],
)
def test_bad_requests_get_400_naming_the_field(emulator: Start, payload: Any, named: str) -> None:
    """Malformed bodies are answered 400 with an error that names the offending field."""
    server = emulator()
    answer = post(server, "medimageinsight", payload)
    assert answer.status_code == 400
    assert named in answer.json()["error"]


def test_cxr_needs_a_frontal_image(emulator: Start) -> None:
    """A CXRReportGen request without the frontal_image column is a 400 naming the column."""
    server = emulator()
    answer = post(server, "cxrreportgen", body(["indication"], [["Cough"]]))
    assert answer.status_code == 400
    assert "missing column frontal_image" in answer.json()["error"]


@pytest.mark.parametrize(
    ("model", "columns", "limit"),
    [
        ("medimageinsight", ["image", "text"], 1024),
        ("cxrreportgen", ["frontal_image"], 10),
        ("medimageparse", ["image", "text"], 256),
    ],
)
def test_too_many_rows_are_refused(
    emulator: Start, model: str, columns: list[str], limit: int
) -> None:
    """One row more than the documented limit is refused with a message giving the limit."""
    server = emulator()
    rows = [["", "text"][: len(columns)] for _ in range(limit + 1)]
    answer = post(server, model, body(columns, rows))
    assert answer.status_code == 400
    assert f"{limit + 1} rows, at most {limit} per request" in answer.json()["error"]


def test_mime_and_plain_base64_and_absent_sides(emulator: Start, png: Callable[..., bytes]) -> None:
    """MIME base64 (newlines) and plain base64 decode alike; "" and null both mean an absent
    side; only the present side's features come back."""
    server = emulator()
    image = png(np.arange(40 * 50, dtype=np.uint32).reshape(40, 50) % 251)
    mime, plain = base64.encodebytes(image).decode(), base64.b64encode(image).decode()
    assert "\n" in mime
    rows = [[mime, ""], [plain, None]]
    answer = post(server, "medimageinsight", body(["image", "text"], rows, {}))
    assert answer.status_code == 200
    first, second = answer.json()
    assert first["image_features"] == second["image_features"]
    assert len(first["image_features"]) == 1 and len(first["image_features"][0]) == 1024
    assert "text_features" not in first and first["scaling_factor"] == pytest.approx(4.513362)
    text_only = post(server, "medimageinsight", body(["image", "text"], [[None, "chest"]]))
    assert len(text_only.json()[0]["text_features"]) == 1024  # flat, as observed


@pytest.mark.parametrize("flag", [False, "false"])
def test_scaling_factor_can_be_turned_off(emulator: Start, flag: Any) -> None:
    """get_scaling_factor false (boolean or string) leaves scaling_factor out."""
    server = emulator()
    rows = [["", "chest"]]
    answer = post(
        server, "medimageinsight", body(["image", "text"], rows, {"get_scaling_factor": flag})
    )
    assert "scaling_factor" not in answer.json()[0]


def test_key_auth(emulator: Start) -> None:
    """With a key configured, a missing or wrong bearer gets 401 and the right one gets 200."""
    server = emulator(key=SecretStr("k1"))
    payload = body(["image", "text"], [["", "chest"]])
    assert post(server, "medimageinsight", payload).status_code == 401
    assert post(server, "medimageinsight", payload, Authorization="Bearer k2").status_code == 401
    assert post(server, "medimageinsight", payload, Authorization="Bearer k1").status_code == 200


def test_unknown_deployment_gets_404(emulator: Start) -> None:
    """With deployments configured, a request pinned to another deployment gets 404 naming it."""
    server = emulator(deployments=["mi-v12"])
    payload = body(["image", "text"], [["", "chest"]])
    wrong = post(server, "medimageinsight", payload, **{"azureml-model-deployment": "mi-v1"})
    assert wrong.status_code == 404 and "mi-v1" in wrong.text
    right = post(server, "medimageinsight", payload, **{"azureml-model-deployment": "mi-v12"})
    assert right.status_code == 200
    assert post(server, "medimageinsight", payload).status_code == 200  # unpinned: any


def test_every_response_says_it_is_an_emulator(emulator: Start) -> None:
    """Answers, errors and unknown paths all carry the not-a-clinical-model header."""
    server = emulator()
    answers = [
        post(server, "medimageinsight", body(["image", "text"], [["", "chest"]])),
        post(server, "medimageinsight", b"{}"),
        post(server, "nosuchmodel", b"{}"),
        httpx.get(f"{server.url}/nowhere"),
        httpx.get(f"{server.url}/"),
    ]
    assert [answer.status_code for answer in answers] == [200, 400, 404, 404, 200]
    assert all(answer.headers[EMULATOR_HEADER] == EMULATOR_NOTICE for answer in answers)
    assert "not a clinical model" in answers[-1].text


@pytest.mark.parametrize("status", [408, 429, 503])
def test_injected_faults_use_the_configured_statuses(emulator: Start, status: int) -> None:
    """With fault_rate 1 every call fails with the configured status; 429 and 503 carry the
    configured Retry-After."""
    server = emulator(fault_rate=1.0, fault_statuses=[status], retry_after_s=2)
    answer = post(server, "medimageinsight", body(["image", "text"], [["", "chest"]]))
    assert answer.status_code == status
    assert answer.headers.get("retry-after") == (None if status == 408 else "2")


def test_answers_are_deterministic(emulator: Start, parse_png: bytes) -> None:
    """Two emulators give byte-identical answers to the same request."""
    payload = body(["image", "text"], [[base64.b64encode(parse_png).decode(), "liver & lung"]])
    first = post(emulator(), "medimageparse", payload)
    second = post(emulator(), "medimageparse", payload)
    assert first.status_code == 200 and first.content == second.content
    masks = json.loads(first.json()[0]["image_features"])
    assert masks["shape"] == [2, 1024, 1024] and masks["dtype"] == "uint8"


def test_undecodable_image_is_a_model_error(emulator: Start) -> None:
    """Base64 that is not an image is a 424 from the model container, with its reason."""
    server = emulator()
    not_png = base64.b64encode(b"plain text, not an image").decode()
    answer = post(server, "cxrreportgen", body(["frontal_image"], [[not_png]]))
    assert answer.status_code == 424
    assert "cannot decode the image" in answer.headers["ms-azureml-model-error-reason"]


def test_categories_are_among_the_sixteen() -> None:
    """Prompt words map to one of MedImageParse's 16 categories, lesions before organs."""
    prompts = [
        "liver tumor",
        "COVID-19 infection",
        "pleural effusion",
        "renal cyst",
        "aorta",
        "left ventricle",
        "optic disc",
        "neoplastic cells",
        "brain",
        "pancreas",
        "bone",
    ]
    names = [category(prompt) for prompt in prompts]
    assert set(names) <= set(PARSE_CATEGORIES)
    assert names[:3] == ["tumor", "infection", "fluid disturbance"]
    assert names[-1] == "other"


def test_starting_the_emulator_logs_that_it_is_not_clinical() -> None:
    """start_emulator logs an emulator_started event that says it is not a clinical model."""
    with capture_logs() as logs:
        server = start_emulator(EmulatorSettings())
    try:
        (event,) = [log for log in logs if log["event"] == "emulator_started"]
        assert event["url"] == server.url and "not a clinical model" in event["notice"]
    finally:
        server.stop()


def _reference_masks(gray: np.ndarray[Any, Any], prompts: list[str]) -> np.ndarray[Any, Any]:
    """The emulator's masks computed the plain way: each pixel compared with its band's edges."""
    masks = np.zeros((len(prompts), *gray.shape), dtype=np.uint8)
    content = gray > 0
    if not content.any():
        return masks
    edges = np.quantile(gray[content], np.linspace(0, 1, 5))
    for k, prompt in enumerate(prompts):
        band = answers._prompt_hash(prompt) % 4
        upper = gray <= edges[band + 1] if band == 3 else gray < edges[band + 1]
        masks[k][content & (gray >= edges[band]) & upper] = 255
    return masks


@settings(max_examples=25, deadline=None)
@given(
    pixels=hnp.arrays(np.uint8, (1024, 1024), elements=st.integers(0, 255), fill=st.just(0)),
    low=st.integers(0, 255),
    prompts=st.lists(st.sampled_from(["lung", "tumor", "liver", "kidney", "x"]), min_size=1),
)
def test_parse_answers_are_the_plain_computation_serialized_as_json(
    pixels: np.ndarray[Any, Any], low: int, prompts: list[str]
) -> None:
    """The emulator's lookup-table masks and its spliced serialization give the bytes of the
    plain computation serialized with ``json.dumps``: what the gateway's digests were made with."""
    gray = np.where(pixels >= low, pixels, 0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    row = {"image": base64.b64encode(buffer.getvalue()).decode(), "text": " & ".join(prompts)}
    expected = _reference_masks(gray.astype(np.float32), prompts)
    plain = {
        "image_features": json.dumps(
            {
                "data": base64.b64encode(expected.tobytes()).decode("ascii"),
                "shape": list(expected.shape),
                "dtype": "uint8",
            }
        ),
        "text_features": [category(p) for p in prompts],
    }
    rows = [answers.parse_row(row, n) for n in range(2)]
    assert answers.encoded_answer(rows) == json.dumps([plain, plain]).encode()
