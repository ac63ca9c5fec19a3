"""The contactor-matrix board of a pile with a shared module pool."""
