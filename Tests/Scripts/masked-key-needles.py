#!/usr/bin/env python3
"""Print masked search needles for the secret parts of a private key file.

Usage: masked-key-needles.py KEY.pem MASK_HEX

For an RSA key (private exponent, both primes) or an EC key (private scalar), it
takes 32 bytes from the middle of each secret number, in big-endian order (as DER
and PKCS#11 hold them) and little-endian order (as OpenSSL BIGNUM words hold them
on x86-64), XORs them with the 32-byte mask and prints one hex line per needle.
The unmasked bytes never leave this process, so a memory scan of the test process
cannot find its own copy.
"""
import re
import subprocess
import sys


def secret_numbers(key_path):
    text = subprocess.run(
        ["openssl", "pkey", "-in", key_path, "-noout", "-text"],
        check=True, capture_output=True, text=True).stdout
    numbers = []
    for name in ("privateExponent", "prime1", "prime2", "priv"):
        match = re.search(name + r":\s*\n((?:\s+[0-9a-f:]+\n)+)", text)
        if match:
            digits = re.sub(r"[^0-9a-f]", "", match.group(1))
            value = bytes.fromhex(digits).lstrip(b"\x00")
            numbers.append(value)
    return numbers


def main():
    key_path, mask_hex = sys.argv[1], sys.argv[2]
    mask = bytes.fromhex(mask_hex)
    for number in secret_numbers(key_path):
        start = (len(number) - len(mask)) // 2
        window = number[start:start + len(mask)]
        for ordered in (window, bytes(reversed(window))):
            print(bytes(a ^ b for a, b in zip(ordered, mask)).hex())


if __name__ == "__main__":
    main()
