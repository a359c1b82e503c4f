"""Worker entry points: the function RQ runs (:mod:`.rq_worker`) and ``concord worker`` (:mod:`.supervisor`).

The jobs themselves (claiming, running, recording, the reaper and the relay) live in
:mod:`concord_core.jobs`; this package only puts them into processes. Without Redis the API server runs jobs
on in-process threads instead (``concord_core.jobs.dispatch.InlineDispatcher``).
"""
