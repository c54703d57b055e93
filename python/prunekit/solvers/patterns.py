"""Sparsity patterns: unstructured, or N:M (n kept of every m consecutive inputs)."""


def parse_pattern(pattern) -> tuple[int, int] | None:
    """None (unstructured), (n, m) or "n:m" -> None or (n, m), validated: 0 < n < m.

    >>> parse_pattern("2:4")
    (2, 4)
    """
    if pattern is None:
        return None
    if isinstance(pattern, str):
        parts = pattern.split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"pattern: expected 'n:m' with integers n < m (e.g. '2:4'), but got {pattern!r}")
        n, m = int(parts[0]), int(parts[1])
    else:
        try:
            n, m = (int(v) for v in pattern)
        except (TypeError, ValueError):
            raise ValueError(f"pattern: expected None, (n, m) or 'n:m', but got {pattern!r}") from None
    if not 0 < n < m:
        raise ValueError(f"pattern: expected 0 < n < m (n kept of every m), but got n={n}, m={m}")
    return n, m
