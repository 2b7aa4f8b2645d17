"""Pure tensor functions behind the cfmask components."""

__all__: tuple[str, ...] = ()
