"""Proof by behaviour: a suspected span is confirmed when removing it changes the model's answer."""
