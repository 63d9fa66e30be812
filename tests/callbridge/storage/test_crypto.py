"""Secrets at rest."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from callbridge.storage.crypto import SecretBox, SecretDecryptionError


class TestSecretBox:
    def test_round_trip_and_no_clear_text(self) -> None:
        box = SecretBox([Fernet.generate_key()])
        cipher = box.encrypt("access-token-123")
        assert "access-token-123" not in cipher
        assert box.decrypt(cipher) == "access-token-123"

    def test_rotation_keeps_old_ciphertexts_readable_then_moves_them(self) -> None:
        old, new = Fernet.generate_key(), Fernet.generate_key()
        cipher = SecretBox([old]).encrypt("secret")
        rotating = SecretBox([new, old])
        rotated = rotating.rotate(cipher)
        assert SecretBox([new]).decrypt(rotated) == "secret"
        with pytest.raises(SecretDecryptionError):
            SecretBox([new]).decrypt(cipher)

    def test_wrong_key_is_a_clear_error(self) -> None:
        cipher = SecretBox([Fernet.generate_key()]).encrypt("x")
        with pytest.raises(SecretDecryptionError, match="key"):
            SecretBox([Fernet.generate_key()]).decrypt(cipher)
