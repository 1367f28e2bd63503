"""Every Prometheus metric popsync exports, defined once, with its meaning.

Labels are bounded: worker, stage, reason code, event type, source registry,
topic. Never a PIN, a name or free text.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter(
    "popsync_events_consumed_total",
    "Messages a worker read from its input topic.",
    ["worker", "topic"],
)
EVENTS_VALIDATED = Counter(
    "popsync_events_validated_total",
    "Registry events that passed validation and went to the validated topic.",
    ["event_type", "source_registry"],
)
EVENTS_DEAD_LETTERED = Counter(
    "popsync_events_dead_lettered_total",
    "Messages parked on the dead-letter topic, by stage and reason code.",
    ["stage", "reason"],
)
UPDATES_APPLIED = Counter(
    "popsync_updates_applied_total",
    "Events the synchronizer applied to a citizen (one citizen update each).",
    ["event_type", "source_registry"],
)
DUPLICATES_SKIPPED = Counter(
    "popsync_duplicates_skipped_total",
    "Re-delivered or re-sent events (same id, same content) that changed nothing.",
    ["worker"],
)
CONFLICTS = Counter(
    "popsync_conflicts_total",
    "Events surfaced as merge conflicts instead of being applied, by conflict code.",
    ["conflict_code"],
)
STORE_ROWS_WRITTEN = Counter(
    "popsync_store_rows_written_total",
    "Rows the synchronizer sent to the central store, by table (idempotent re-writes included).",
    ["table"],
)
STEP_RETRIES = Counter(
    "popsync_step_retries_total",
    "Batch steps that failed on an infrastructure fault and are being retried.",
    ["worker"],
)
WAITING_FOR_INFRASTRUCTURE = Gauge(
    "popsync_waiting_for_infrastructure",
    "1 while a worker's batch step is failing on a broker/database fault and backing off.",
    ["worker"],
)
MERGE_FENCED = Gauge(
    "popsync_merge_fenced",
    "1 while the synchronizer's batch waits for a backfill, which holds the merge fence.",
    ["worker"],
)
BATCH_SIZE = Histogram(
    "popsync_batch_size",
    "Messages per processed batch.",
    ["worker"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500),
)
BATCH_SECONDS = Histogram(
    "popsync_batch_duration_seconds",
    "Wall time to process one batch, outputs flushed and rows committed.",
    ["worker"],
)
DEAD_LETTER_WINDOW_RATIO = Gauge(
    "popsync_dead_letter_window_ratio",
    "Share of a worker's most recent messages (POPSYNC_DEAD_LETTER_LIMIT__WINDOW) that were "
    "dead-lettered; the worker stops above POPSYNC_DEAD_LETTER_LIMIT__MAX_RATIO.",
    ["stage"],
)
DEAD_LETTERS_IN_A_ROW = Gauge(
    "popsync_dead_letters_in_a_row",
    "Messages dead-lettered in a row by a worker; it stops at "
    "POPSYNC_DEAD_LETTER_LIMIT__MAX_CONSECUTIVE.",
    ["stage"],
)
SOURCE_QUARANTINED = Gauge(
    "popsync_source_quarantined",
    "1 while a publishing source (registry/province, no personal data) is quarantined for "
    "crossing the dead-letter limit: its events are parked as SOURCE_QUARANTINED until "
    "`popsync sources release`.",
    ["source"],
)
SOURCE_QUARANTINES = Counter(
    "popsync_source_quarantines_total",
    "Sources this worker quarantined, by its stage and the source's most frequent reason.",
    ["stage", "reason"],
)
EVENT_TO_STORE_SECONDS = Histogram(
    "popsync_event_to_store_seconds",
    "From the moment the registry recorded an event (recorded_at) to the commit of its "
    "citizen update in the central store.",
    ["source_registry"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
CONSUMER_LAG = Gauge(
    "popsync_consumer_lag_messages",
    "Messages between a worker's position and the partition's high-water mark (from fetch "
    "responses, not ListOffsets).",
    ["worker", "topic", "partition"],
)
LAST_EVENT_TIMESTAMP = Gauge(
    "popsync_last_event_recorded_timestamp_seconds",
    "recorded_at (Unix time) of the newest event the validator has seen, per source registry "
    "and current province: how fresh each registry's stream is.",
    ["source_registry", "province"],
)
WORKER_UP = Gauge(
    "popsync_worker_up",
    "1 while the worker process runs its consumer loop.",
    ["worker"],
)
WORKER_READY = Gauge(
    "popsync_worker_ready",
    "1 when the worker has partitions assigned and its lag is below "
    "POPSYNC_OBSERVABILITY__READY_MAX_LAG (what /readyz answers).",
    ["worker"],
)
MATCH_OUTCOMES = Counter(
    "popsync_match_outcomes_total",
    "Sector records without a PIN, by how the validator's matcher decided them: LINKED "
    "(linked automatically), REVIEW (sent to the review queue), UNMATCHED (reported).",
    ["source_registry", "outcome"],
)

# ----------------------------------------------------------- the verification service
# (`popsync serve`). Labels: endpoint (a route name, never a path, which may hold a PIN),
# HTTP status code, result class, and partner id (bounded by the partner directory).

HTTP_REQUESTS = Counter(
    "popsync_http_requests_total",
    "Requests the verification service answered, by route and HTTP status code.",
    ["endpoint", "code"],
)
HTTP_SECONDS = Histogram(
    "popsync_http_request_duration_seconds",
    "Time from a request's arrival to its answer, by route.",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
VERIFY_ITEMS = Counter(
    "popsync_verify_items_total",
    "Questions answered (a batch item is one), by route and result class: match, partial, "
    "no_match, not_found, found.",
    ["endpoint", "result"],
)
PARTNER_REJECTIONS = Counter(
    "popsync_partner_rejections_total",
    "Requests refused with 429, by partner id and limit: rate_limit or daily_quota.",
    ["partner", "kind"],
)
HTTP_IN_FLIGHT = Gauge(
    "popsync_http_in_flight", "Requests the process is working on (POPSYNC_SERVE__MAX_IN_FLIGHT)."
)
HTTP_ADMISSION_REJECTIONS = Counter(
    "popsync_http_admission_rejections_total",
    "Requests refused at once with 503 because POPSYNC_SERVE__MAX_IN_FLIGHT were in progress.",
)
DB_POOL_SIZE = Gauge("popsync_db_pool_size", "PostgreSQL connections the pool holds.")
DB_POOL_IN_USE = Gauge("popsync_db_pool_in_use", "Pooled connections lent to requests.")
DB_POOL_WAITING = Gauge("popsync_db_pool_waiting", "Requests waiting for a pooled connection.")
AUDIT_BACKLOG = Gauge(
    "popsync_audit_backlog", "Access-audit rows answered but not yet written to PostgreSQL."
)
AUDIT_ROWS_WRITTEN = Counter("popsync_audit_rows_written_total", "Access-audit rows written.")
AUDIT_ROWS_DROPPED = Counter(
    "popsync_audit_rows_dropped_total",
    "Audit rows of refused requests dropped because the backlog was full (PostgreSQL down "
    "or slow): no answer is given then, but the refusals themselves go unrecorded.",
)
AUDIT_WRITE_FAILURES = Counter(
    "popsync_audit_write_failures_total",
    "Failed writes of access-audit rows (they are kept and written again).",
)
