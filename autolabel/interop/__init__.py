"""Interop: exports of a run's annotations and the exchange with Label Studio and Argilla."""
