import COpenSSL
import CP11Kit
import PKCS11

extension TokenStore {
    /// Writes the identity as a PFX, for a key imported with `exportable`.
    ///
    /// The key leaves the token only wrapped (`CKM_AES_KEY_WRAP_PAD`) under a session
    /// key that exists for this call. It is unwrapped in process into a PKCS#8
    /// structure, written into the PFX and wiped. A key with `CKA_EXTRACTABLE` false
    /// is refused before anything is asked of the token.
    public func exportPFX(_ identity: Identity, password: SecretBytes?) throws -> [UInt8] {
        guard let keyObject = identity.privateKeyObject else {
            throw TokenStoreError(
                .identityNotFound, "\(identity.thumbprint) has no private key in \(token): there is nothing to export with it")
        }
        guard identity.isExportable == true else {
            throw TokenStoreError(
                .notExportable,
                "the private key of \(identity.thumbprint) is non-exportable: its CKA_EXTRACTABLE attribute is false "
                    + "(it was imported without --exportable), and the token never releases such a key")
        }
        let chain = try authorityChain(for: identity.certificate)
        let wrapped: [UInt8]
        let wrappingKeyValue: SecretBytes
        do {
            (wrapped, wrappingKeyValue) = try pool.withSession { session in
                try wrapPrivateKey(keyObject, session: session)
            }
        } catch let error as PKCS11Error {
            throw TokenStoreError(.token, "exporting \(identity.thumbprint) from \(token) failed: \(error)", underlying: error)
        }
        let key = try TokenStore.unwrapPKCS8(wrapped, key: wrappingKeyValue)
        defer { EVP_PKEY_free(key) }
        wrappingKeyValue.wipe()
        return try PFX.encode(
            key: key, certificate: identity.certificate, chain: chain, password: password,
            friendlyName: identity.label.isEmpty ? nil : identity.label)
    }

    /// Returns the CA certificates in the token, trust anchors included, that issued
    /// `certificate`, nearest first.
    public func authorityChain(for certificate: Certificate) throws -> [Certificate] {
        let candidates = try identities().map(\.certificate) + TrustStore(token: token).anchors().map(\.certificate)
        return TokenStore.authorityChain(for: certificate, among: candidates)
    }

    /// Returns the CA certificates among `certificates` that issued `certificate`, nearest first.
    public static func authorityChain(for certificate: Certificate, among certificates: [Certificate]) -> [Certificate] {
        let authorities = certificates.filter { $0.isCA && $0.der != certificate.der }
        var chain: [Certificate] = []
        var current = certificate
        while current.issuerDER != current.subjectDER,
            let issuer = authorities.first(where: { $0.subjectDER == current.issuerDER && !chain.contains($0) })
        {
            chain.append(issuer)
            current = issuer
        }
        return chain
    }

    private func wrapPrivateKey(_ keyObject: ObjectHandle, session: Session) throws -> ([UInt8], SecretBytes) {
        let wrappingKey = try session.generateKey(
            .aesKeyGeneration,
            template: [
                .ulong(UInt(CKA_CLASS), UInt(CKO_SECRET_KEY)),
                .ulong(UInt(CKA_KEY_TYPE), UInt(CKK_AES)),
                .ulong(UInt(CKA_VALUE_LEN), 32),
                .bool(UInt(CKA_TOKEN), false),
                .bool(UInt(CKA_PRIVATE), true),
                .bool(UInt(CKA_WRAP), true),
                .bool(UInt(CKA_SENSITIVE), false),
                .bool(UInt(CKA_EXTRACTABLE), true),
            ])
        defer { try? session.destroyObject(wrappingKey) }
        let wrapped = try session.wrapKey(.aesKeyWrapPad, wrappingKey: wrappingKey, key: keyObject)
        let values = try session.attributes(wrappingKey, [UInt(CKA_VALUE)])
        guard var value = values[UInt(CKA_VALUE)], value.count == 32 else {
            throw PKCS11Error(kind: .protocolViolation, context: "the token did not reveal the session wrapping key it created")
        }
        let secret = value.withUnsafeBytes { SecretBytes(copying: $0) }
        value.withUnsafeMutableBytes { SecretBytes.clear($0) }
        return (wrapped, secret)
    }

    /// Decrypts an RFC 5649 wrapped PKCS#8 key and decodes it into an OpenSSL key.
    private static func unwrapPKCS8(_ wrapped: [UInt8], key: SecretBytes) throws -> OpaquePointer {
        OpenSSLErrorQueue.clear()
        guard let context = EVP_CIPHER_CTX_new() else {
            throw TokenStoreError(.openSSL, "allocating a cipher context failed")
        }
        defer { EVP_CIPHER_CTX_free(context) }
        guard let cipher = EVP_CIPHER_fetch(nil, "AES-256-WRAP-PAD", nil) else {
            throw TokenStoreError(.openSSL, "AES-256-WRAP-PAD is unavailable: \(OpenSSLErrorQueue.drain())")
        }
        defer { EVP_CIPHER_free(cipher) }
        let plain = try SecretBytes(count: wrapped.count + 16) { buffer in
            let output = buffer.bindMemory(to: UInt8.self).baseAddress
            var total: Int32 = 0
            var finalLength: Int32 = 0
            let ok = key.withUnsafeBytes { keyBytes in
                EVP_DecryptInit_ex2(context, cipher, keyBytes.bindMemory(to: UInt8.self).baseAddress, nil, nil) == 1
                    && EVP_DecryptUpdate(context, output, &total, wrapped, Int32(wrapped.count)) == 1
                    && EVP_DecryptFinal_ex(context, output! + Int(total), &finalLength) == 1
            }
            guard ok else {
                throw TokenStoreError(.openSSL, "unwrapping the exported key failed: \(OpenSSLErrorQueue.drain())")
            }
            // d2i below reads the DER structure's own length, so the zeroed tail
            // after the plaintext is never looked at.
        }
        let decoded = plain.withUnsafeBytes { bytes -> OpaquePointer? in
            var pointer: UnsafePointer<UInt8>? = bytes.bindMemory(to: UInt8.self).baseAddress
            guard let info = d2i_PKCS8_PRIV_KEY_INFO(nil, &pointer, bytes.count) else {
                return nil
            }
            defer { PKCS8_PRIV_KEY_INFO_free(info) }
            return EVP_PKCS82PKEY(info)
        }
        plain.wipe()
        guard let decoded else {
            throw TokenStoreError(.openSSL, "decoding the exported key failed: \(OpenSSLErrorQueue.drain())")
        }
        return decoded
    }
}
