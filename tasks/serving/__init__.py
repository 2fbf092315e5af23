"""Serving: the line's champion over HTTP, following the registry; what it sees goes back to
labelling (feedback) and is compared with the champion's test set (monitoring)."""
