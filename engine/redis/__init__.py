"""Scale-out over Redis: the bot-side ``RedisBackend`` and what ``python -m engine.worker`` uses.

One module per concern, each importable on its own (none of them imports torch: the bot
imports this package; ``engine.worker`` is the process that runs ``task``):

* ``settings`` — ``RemoteSettings`` (``IMAGINE_REDIS_*`` and friends), ``redact_url``;
* ``redaction`` — the log filter that keeps Redis URLs and passwords out of every log line;
* ``keys`` — every Redis key, channel and the taskiq task name, in one place;
* ``wire`` — the versioned messages both sides exchange (job, progress events, result envelope,
  heartbeat, worker state) and their strict parsers;
* ``connection`` — Redis clients, "Redis is down" errors, retry-until-back;
* ``broker`` — the taskiq broker, result backend and middleware both sides configure alike;
* ``presence`` — heartbeats: read by the bot for ``/status``, written by workers with leases;
* ``ledger`` — a worker's per-job bookkeeping (duplicates, attempts, claims, cancel flags);
* ``task`` — the worker's taskiq task: one job message in, one result envelope out;
* ``backend`` — ``RedisBackend``, the ``ImageBackend`` of the bot, and ``loops``, its
  dispatcher, events and reconcile loops;
* ``cli`` — ``python -m engine.remote status|generate`` for operators.

This ``__init__`` imports nothing, so importing one part never drags in the others.
"""
