"""Secrets at rest: tokens and webhook secrets are stored as MultiFernet ciphertexts.

The first key encrypts; every key decrypts, so keys rotate by prepending a new one, running
``callbridge integration rotate-keys`` (which re-encrypts), then dropping the old key.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from callbridge.domain.errors import StorageError


class SecretDecryptionError(StorageError):
    """A stored secret cannot be decrypted with the configured keys; was a key removed?"""


class SecretBox:
    """Encrypts and decrypts short secrets with a list of Fernet keys, newest first."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("SecretBox needs at least one key")
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    def encrypt(self, plaintext: str) -> str:
        """Ciphertext of ``plaintext`` under the newest key."""
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        """The plaintext, trying every key."""
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken as err:
            raise SecretDecryptionError() from err

    def rotate(self, ciphertext: str) -> str:
        """Re-encrypt under the newest key (no-op in meaning, new bytes)."""
        try:
            return self._fernet.rotate(ciphertext.encode()).decode()
        except InvalidToken as err:
            raise SecretDecryptionError() from err

    def encrypt_optional(self, plaintext: str | None) -> str | None:
        """Like :meth:`encrypt`, passing None through."""
        return None if plaintext is None else self.encrypt(plaintext)

    def decrypt_optional(self, ciphertext: str | None) -> str | None:
        """Like :meth:`decrypt`, passing None through."""
        return None if ciphertext is None else self.decrypt(ciphertext)
