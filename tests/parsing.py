"""A MedImageParse 2D task run over a synthetic CT series against a model endpoint (the emulator
over loopback HTTP), for the tests of how its frames go out."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from factory import ct_series

from listener.infer import build_clients
from listener.infer.tasks import TaskContext, TaskOutcome, run_task
from listener.route.plan import DEFAULT_ROLE, PlannedTask
from listener.settings import ModelsSettings


def parse_ct(
    url: str, slices: int, uid_seed: str, models: ModelsSettings, **transport: Any
) -> TaskOutcome:
    """Segment ``slices`` synthetic CT slices (prompts lung and tumor) with the clients of
    ``models`` pointed at ``url``; ``transport`` goes to every model transport (permits)."""
    sources = {str(ds.SOPInstanceUID): ds for ds in ct_series(slices, uid_seed=uid_seed)}
    task = PlannedTask(
        rule="ct",
        name="parse",
        model="medimageparse",
        inputs={DEFAULT_ROLE: tuple(sources)},
        prompts=("lung", "tumor"),
    )

    async def go() -> TaskOutcome:
        async with build_clients(models, url, **transport) as clients:
            context = TaskContext(
                clients=clients,
                load=sources.__getitem__,
                clock=lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            )
            return await run_task(task, context)

    return asyncio.run(go())
