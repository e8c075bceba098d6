"""Metric names the code emits: one place, so dashboards and alert rules can be checked against it.

Flink job metrics are registered on the operator's metric group and exported by Flink's Prometheus
reporter as flink_taskmanager_job_task_operator_<name>. Serve metrics go through Ray's metrics API
and are exported by Ray as ray_<name>.
"""

from __future__ import annotations

# Flink job (streaming/operators.py)
EVENTS_IN = "reaseq_events_in"
EVENTS_DUPLICATE = "reaseq_events_duplicate"
DEAD_LETTERS = "reaseq_dead_letters"  # one counter per reason: reaseq_dead_letters_<reason>
STATES_OUT = "reaseq_states_out"
SCORES_OUT = "reaseq_scores_out"
SCORE_BATCHES = "reaseq_score_batches"
SCORE_BATCH_SIZE = "reaseq_score_batch_size"
INFERENCE_LATENCY_MS = "reaseq_inference_latency_ms"
INFERENCE_ERRORS = "reaseq_inference_errors"
EVENT_TO_SCORE_MS = "reaseq_event_to_score_ms"
PENDING_SCORES = "reaseq_pending_scores"
LLM_CALLS = "reaseq_llm_calls"  # LLM requests made in the job's process (counted by the backends): stays 0
BEHAVIOR_REFRESHES = "reaseq_behavior_refreshes"  # users whose inferred behaviours were refreshed
BEHAVIOR_REFRESH_ERRORS = "reaseq_behavior_refresh_errors"
BEHAVIOR_REFRESH_LATENCY_MS = "reaseq_behavior_refresh_latency_ms"
BEHAVIOR_STALENESS_EVENTS = "reaseq_behavior_staleness_events"  # events since the cached inference, at score time

# Ray Serve Ranker (inference/serve/ranker_app.py, inference/serve/app.py)
RANKER_BATCHES = "reaseq_ranker_batches"
RANKER_USERS_SCORED = "reaseq_ranker_users_scored"
RANKER_BATCH_REQUESTS = "reaseq_ranker_batch_requests"
RANKER_BATCH_SECONDS = "reaseq_ranker_batch_seconds"
RANKER_STATE_CACHE = "reaseq_ranker_state_cache"  # users scored, tagged result=hit|unchanged|miss

# Ray Serve BehaviorReasoner (inference/behavior/serve_app.py, inference/serve/app.py)
BEHAVIOR_BATCHES = "reaseq_behavior_batches"
BEHAVIOR_USERS_INFERRED = "reaseq_behavior_users_inferred"
BEHAVIOR_BATCH_SECONDS = "reaseq_behavior_batch_seconds"

JOB_METRICS = (EVENTS_IN, EVENTS_DUPLICATE, STATES_OUT, SCORES_OUT, SCORE_BATCHES, SCORE_BATCH_SIZE,
               INFERENCE_LATENCY_MS, INFERENCE_ERRORS, EVENT_TO_SCORE_MS, PENDING_SCORES, LLM_CALLS,
               BEHAVIOR_REFRESHES, BEHAVIOR_REFRESH_ERRORS, BEHAVIOR_REFRESH_LATENCY_MS, BEHAVIOR_STALENESS_EVENTS)
SERVE_METRICS = (RANKER_BATCHES, RANKER_USERS_SCORED, RANKER_BATCH_REQUESTS, RANKER_BATCH_SECONDS, RANKER_STATE_CACHE,
                 BEHAVIOR_BATCHES, BEHAVIOR_USERS_INFERRED, BEHAVIOR_BATCH_SECONDS)
