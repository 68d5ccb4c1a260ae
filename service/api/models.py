"""/v1/models: the weights files of the models folder, and reading it again."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from .deps import Authorized, Context
from .schemas import ModelList, ModelOut, ReloadOut

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Authorized])


def _list(context) -> ModelList:  # noqa: ANN001 - a ServiceContext
    models = [ModelOut.from_domain(m) for m in context.models.infos()]
    return ModelList(data=models, count=len(models))


@router.get("", response_model=ModelList)
async def list_models(context: Context) -> ModelList:
    """Every model a stream may name (`"model": NAME`), with its card summary, whether it is loaded and
    on which backend, and the error of a file that cannot be used."""
    return _list(context)


@router.post("/reload", response_model=ReloadOut)
async def reload_models(context: Context) -> ReloadOut:
    """Read the models folder again: new files become available, changed files that are loaded are loaded
    again and swapped in between two batches (same configuration), files gone are dropped once unused."""
    changes = await run_in_threadpool(context.models.scan)
    return ReloadOut(**changes, models=_list(context))
