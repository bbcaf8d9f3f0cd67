"""What operators read: Prometheus metrics, event-loop lag, and the JSON audit log."""
