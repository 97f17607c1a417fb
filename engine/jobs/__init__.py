"""The engine's jobs, one module each, all run the same way by ``engine.cli.run_job``.

A job module exposes:

- ``request_from_args(args) -> request``: its settings, from the parsed command line;
- ``run_folder(request, emitter)``: a context manager giving the folder it works in (a ``RunDir``; ``solve``: the
  DATA_DIR it writes), or None; the STOP file in it asks the job to stop;
- ``run(request, run_dir, emitter, cancel) -> dict``: the work; returns the ``done`` event's fields (``fit`` may
  return another final event as ``{"event": ..., ...}``); raises ``EngineError`` subclasses and ``Cancelled``;
- ``WATCHES_STOP``: the job stops on a request (signals, a ``stop`` line, the STOP file, the parent's end:
  engine.liveness); otherwise Ctrl-C interrupts it;
- optionally ``cancelled_fields(exc, request, run_dir, cancel) -> dict``: the ``cancelled`` event's fields when
  ``Cancelled`` escapes ``run`` (by default those of a job stopped before it made anything); ``STRICT_STOP``: a
  STOP file that cannot be removed is bad input; ``report(request, result) -> int`` for jobs that print a report
  instead of a ``done`` event (eval, fidelity, doctor): prints it, returns the exit code.

The runner owns what every job shares: the stop request, the cancel token and its watchers, turning ``Cancelled``
into the ``cancelled`` event, errors into one ``error`` line and the exit codes (PROTOCOL.md).
"""

from __future__ import annotations

# The modules behind the commands (``python -m engine COMMAND``), imported when their command runs.
JOB_MODULES = {"fit": "fit", "solve": "solve", "export": "export", "render": "render", "fidelity": "fidelity",
               "eval": "evaluate", "doctor": "doctor"}

# ``run``'s result in a DDP rank other than 0 (a copy of ``fit`` started by Lightning): it trained and joined the final
# checkpoint; the runner reports nothing for it (exit 0).
OTHER_RANK_DONE = "other_rank_done"
