"""The four model clients the pipeline calls, and the factory that builds them from settings.

Each client builds the exact request the official client sends (docs/models.md §1.1, §2.1,
§3.1, §4.1), hands it to its :class:`~listener.infer.transport.ModelTransport` (auth, limits,
retries, breaker) and decodes the answer into the typed results of
:mod:`converters.model_outputs`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from pydantic import SecretStr

from converters.model_outputs import (
    CxrReport,
    Embeddings,
    ModelIdentity,
    Parse3DResult,
    ParseResult,
)
from listener.errors import ConfigError
from listener.infer import wire
from listener.infer.auth import Authorizer, EntraAuth, KeyAuth
from listener.infer.transport import ModelTransport
from listener.settings import ModelName, ModelSettings, ModelsSettings

T = TypeVar("T")


async def gather_all(*awaitables: Awaitable[T]) -> list[T]:
    """The results of ``awaitables`` run at once, in order; when one fails, the others are
    cancelled (no request of a failed job goes on without it) and its exception is raised as
    it is (the retry and failure handling look at its type)."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class _Client:
    """What every client shares: its transport, identity and closing."""

    model: ModelName

    def __init__(self, transport: ModelTransport) -> None:
        self.transport = transport

    @property
    def identity(self) -> ModelIdentity:
        return self.transport.identity

    async def aclose(self) -> None:
        await self.transport.aclose()


# Text embeddings a MedImageInsight client keeps (the label texts of the classification rules,
# the same for every study), and for how long: a model redeployed behind an unchanged endpoint
# is seen at the latest then, or at once when its scaling factor changes (run_classification).
TEXT_CACHE_SIZE = 4096
TEXT_CACHE_S = 3600.0


class MedImageInsightClient(_Client):
    """Image and text embeddings (§1). Requests hold at most ``batch_size`` rows (within the
    documented 1024) and only one kind of row, the cases the server-side wrapper lists. Text
    embeddings are kept for :data:`TEXT_CACHE_S` (at most :data:`TEXT_CACHE_SIZE` texts): a
    classification asks for its labels' texts each time, and the answer is the same."""

    model: ModelName = "medimageinsight"

    def __init__(
        self,
        transport: ModelTransport,
        *,
        batch_size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(transport)
        self.batch_size = min(batch_size, wire.MI_MAX_ROWS)
        self._clock = clock
        self._texts: OrderedDict[str, tuple[float, Embeddings]] = OrderedDict()

    async def embed_images(self, pngs: Sequence[bytes]) -> list[Embeddings]:
        """One unit-norm vector per image, in input order."""
        return await self._embed([[wire.encode_b64(png), ""] for png in pngs])

    async def embed_texts(self, texts: Sequence[str]) -> list[Embeddings]:
        """One unit-norm vector per text (the server cuts text after 77 tokens), in order;
        texts embedded in the last :data:`TEXT_CACHE_S` are not sent again."""
        now = self._clock()
        for text, (at, _) in list(self._texts.items()):
            if now - at > TEXT_CACHE_S:
                del self._texts[text]
        missing = [text for text in dict.fromkeys(texts) if text not in self._texts]
        if missing:
            fresh = await self._embed([["", text] for text in missing])
            for text, embedding in zip(missing, fresh, strict=True):
                self._texts[text] = (now, embedding)
            while len(self._texts) > TEXT_CACHE_SIZE:
                self._texts.popitem(last=False)
        return [self._texts[text][1] for text in texts]

    def forget_texts(self) -> None:
        """Drop the kept text embeddings (the model behind the endpoint changed)."""
        self._texts.clear()

    async def _embed(self, rows: list[list[str]]) -> list[Embeddings]:
        batches = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        answers = await gather_all(*(self._embed_batch(batch) for batch in batches))
        return [embedding for answer in answers for embedding in answer]

    async def _embed_batch(self, rows: list[list[str]]) -> list[Embeddings]:
        body = wire.envelope(["image", "text"], rows, {"get_scaling_factor": True})
        return wire.decode_embeddings(await self.transport.score(body), len(rows))


class CxrReportGenClient(_Client):
    """Grounded chest X-ray findings (§2)."""

    model: ModelName = "cxrreportgen"

    async def generate(
        self,
        frontal: bytes,
        *,
        lateral: bytes | None = None,
        prior: bytes | None = None,
        indication: str = "",
        technique: str = "",
        comparison: str = "None",
        prior_report: str | None = None,
    ) -> CxrReport:
        """Draft findings for one study, with boxes on the frontal image.

        Columns as the official client sends them: frontal_image, indication, technique,
        comparison (the literal "None" when there is none), then lateral_image, prior_image and
        prior_report only when given.
        """
        row: dict[str, str] = {
            "frontal_image": wire.encode_b64(frontal),
            "indication": indication,
            "technique": technique,
            "comparison": comparison or "None",
        }
        if lateral:
            row["lateral_image"] = wire.encode_b64(lateral)
        if prior:
            row["prior_image"] = wire.encode_b64(prior)
        if prior_report:
            row["prior_report"] = prior_report
        body = wire.envelope(list(row), [list(row.values())], {})
        return wire.decode_cxr_report(await self.transport.score(body))


class MedImageParseClient(_Client):
    """2D text-prompted segmentation (§3); the image must already be 1024×1024. A request holds
    at most ``batch_size`` rows (within the documented 256), one image and the prompts each."""

    model: ModelName = "medimageparse"

    def __init__(self, transport: ModelTransport, *, batch_size: int = 1) -> None:
        super().__init__(transport)
        self.batch_size = max(1, min(batch_size, wire.PARSE_MAX_ROWS))

    async def segment(self, png: bytes, prompts: Sequence[str]) -> ParseResult:
        """One 0/255 mask per prompt (in prompt order) and the category the model gave each."""
        return (await self.segment_rows([png], prompts))[0]

    async def segment_rows(
        self, pngs: Sequence[bytes], prompts: Sequence[str]
    ) -> list[ParseResult]:
        """:meth:`segment` for several images with the same prompts in one request (at most
        ``batch_size`` of them: the caller splits a longer series); results in input order."""
        if not 0 < len(pngs) <= self.batch_size:
            raise ValueError(f"{len(pngs)} images for a request of at most {self.batch_size}")
        text = wire.join_prompts(prompts)
        body = wire.envelope(["image", "text"], [[wire.encode_b64(png), text] for png in pngs], {})
        answer = await self.transport.score(body)
        prompt_tuple = tuple(text.split(wire.PROMPT_SEPARATOR))
        return await asyncio.to_thread(wire.decode_parse_rows, answer, prompt_tuple, len(pngs))


class MedImageParse3DClient(_Client):
    """Volumetric segmentation of a NIfTI volume (§4)."""

    model: ModelName = "medimageparse3d"

    async def segment(self, nifti_gz: bytes, prompts: Sequence[str]) -> Parse3DResult:
        """A label volume in the input's geometry: 0 background, k for the k-th prompt."""
        text = wire.join_prompts(prompts)
        body = wire.envelope(["image", "text"], [[wire.encode_b64(nifti_gz), text]], {})
        answer = await self.transport.score(body)
        prompt_tuple = tuple(text.split(wire.PROMPT_SEPARATOR))
        return await asyncio.to_thread(wire.decode_parse3d, answer, prompt_tuple)


@dataclass
class ModelClients:
    """One client per model, as the pipeline uses them; close with :meth:`aclose`."""

    medimageinsight: MedImageInsightClient
    cxrreportgen: CxrReportGenClient
    medimageparse: MedImageParseClient
    medimageparse3d: MedImageParse3DClient

    async def aclose(self) -> None:
        for client in (
            self.medimageinsight,
            self.cxrreportgen,
            self.medimageparse,
            self.medimageparse3d,
        ):
            await client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


def _transport(
    name: ModelName,
    settings: ModelSettings,
    emulator_url: str | None,
    emulator_key: SecretStr | None,
    transport_options: dict[str, Any],
) -> ModelTransport:
    emulated = settings.endpoint is None
    authorizer: Authorizer
    if emulated:
        if emulator_url is None:
            raise ConfigError(f"models.{name}.endpoint: not set, and no emulator is running")
        endpoint = f"{emulator_url.rstrip('/')}/{name}/score"
        authorizer = KeyAuth(settings.key or emulator_key)
    else:
        endpoint = str(settings.endpoint)
        authorizer = (
            EntraAuth(setting=f"models.{name}.auth")
            if settings.auth == "entra"
            else KeyAuth(settings.key)
        )
    return ModelTransport(
        name,
        settings,
        endpoint=endpoint,
        emulated=emulated,
        authorizer=authorizer,
        **transport_options,
    )


def build_clients(
    models: ModelsSettings,
    emulator_url: str | None,
    *,
    emulator_key: SecretStr | None = None,
    **transport_options: Any,
) -> ModelClients:
    """Clients for all four models; a model without an endpoint is pointed at
    ``{emulator_url}/<model>/score``. ``transport_options`` go to every
    :class:`ModelTransport` (backoff, clocks, sleep: for tests and benchmarks)."""

    def transport(name: ModelName) -> ModelTransport:
        return _transport(name, models.get(name), emulator_url, emulator_key, transport_options)

    return ModelClients(
        medimageinsight=MedImageInsightClient(
            transport("medimageinsight"), batch_size=models.medimageinsight.batch_size
        ),
        cxrreportgen=CxrReportGenClient(transport("cxrreportgen")),
        medimageparse=MedImageParseClient(
            transport("medimageparse"), batch_size=models.medimageparse.batch_size
        ),
        medimageparse3d=MedImageParse3DClient(transport("medimageparse3d")),
    )
