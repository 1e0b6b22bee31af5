"""What `import eval_quant` raises for input that cannot give meaningful numbers."""


class EvalError(ValueError):
    """Bad input to the evaluation suite or the report: the message says what and how to fix it."""
