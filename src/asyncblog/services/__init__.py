"""Units of work and the rules around them. Services own transactions: they commit or roll back."""
