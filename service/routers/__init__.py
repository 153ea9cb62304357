"""One router per resource: scoring, models, health/metrics, the page."""
