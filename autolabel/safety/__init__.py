"""Safety: risk content and prompt-injection detection, and reversible pseudonymisation of dialogue text."""
