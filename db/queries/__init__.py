"""Every query the bot makes, by concern. Each function opens its own short transaction.

Rows come back detached (``expire_on_commit=False``): read their attributes freely, but change
them only through these functions. Datetimes are timezone-aware UTC.

Limits convention, used by guild settings, ``reserve_generation`` and ``quota_status``:
a daily quota or a queued-jobs cap of ``None`` **or 0** means "no limit". Discord's own command
permissions are the tool for "nobody may use /imagine here"; 0 is what admins type to lift a cap.

- ``guild``: a guild's limits, channels, exempt roles and blocked words (``GuildConfig``).
- ``styles``: built-in and guild styles.
- ``quota``: quota days, charging and refunds, queued-job counts, ``/quota``.
- ``generations``: a job's row from reservation to its end, restart recovery, history.
- ``retention``: old finished history rows (and their stored image rows) pruned.
"""

from db.queries.generations import (
    GenerationNotFound,
    JobResultFields,
    NewGeneration,
    complete_generation,
    fail_generation,
    forget_expired_tokens,
    get_generation,
    mark_running,
    record_result,
    reserve_generation,
    set_message,
    unfinished_generations,
    user_history,
)
from db.queries.guild import (
    GuildConfig,
    add_blocked_word,
    find_blocked,
    get_guild_config,
    remove_blocked_word,
    reset_guild_limits,
    update_guild_config,
)
from db.queries.quota import (
    QuotaExceeded,
    QuotaStatus,
    TooManyQueued,
    count_active,
    quota_day,
    quota_resets_at,
    quota_status,
)
from db.queries.retention import PrunedHistory, prune_history
from db.queries.styles import (
    StyleExists,
    StyleNotFound,
    add_style,
    edit_style,
    get_style,
    list_styles,
    remove_style,
    style_key,
    sync_builtin_styles,
)

__all__ = [
    "GenerationNotFound",
    "GuildConfig",
    "JobResultFields",
    "NewGeneration",
    "PrunedHistory",
    "QuotaExceeded",
    "QuotaStatus",
    "StyleExists",
    "StyleNotFound",
    "TooManyQueued",
    "add_blocked_word",
    "add_style",
    "complete_generation",
    "count_active",
    "edit_style",
    "fail_generation",
    "find_blocked",
    "forget_expired_tokens",
    "get_generation",
    "get_guild_config",
    "get_style",
    "list_styles",
    "mark_running",
    "prune_history",
    "quota_day",
    "quota_resets_at",
    "quota_status",
    "record_result",
    "remove_blocked_word",
    "remove_style",
    "reserve_generation",
    "reset_guild_limits",
    "set_message",
    "style_key",
    "sync_builtin_styles",
    "unfinished_generations",
    "update_guild_config",
    "user_history",
]
