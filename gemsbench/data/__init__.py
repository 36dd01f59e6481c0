"""Datasets: raw files -> the prepared format of :mod:`gemsbench.data.prepared`."""
