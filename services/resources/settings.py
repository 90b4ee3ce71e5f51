"""The resources service's settings (the resource library: retention, watch counting)."""

from __future__ import annotations

from services.common.settings import setting

RETENTION_DAYS = setting(
    "RESOURCES_RETENTION_DAYS", int, 365,
    "days a recorded lesson is kept unless marked `kept`, for a bureau that set none (`PUT /v1/resources/retention`)")
RETENTION_CHECK_SECONDS = setting(
    "RESOURCES_RETENTION_CHECK_SECONDS", int, 3600, "how often the resources service deletes expired recordings")
WATCH_HEARTBEAT_SECONDS = setting(
    "WATCH_HEARTBEAT_SECONDS", int, 30,
    "how often a player reports a watch; a watch silent for two intervals has ended")
OBSERVATION_MIN_SECONDS = setting(
    "OBSERVATION_MIN_SECONDS", int, 600,
    "watched seconds from which a teacher's watch of a lesson is recorded as a `lesson_observation`")
