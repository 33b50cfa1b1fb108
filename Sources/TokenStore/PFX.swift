import COpenSSL
import CShims
import PKCS11

/// The contents of a PFX (PKCS#12) file: one identity and the CA certificates that came with it.
public struct PFXContents: Sendable {
    public let certificate: Certificate
    public let chain: [Certificate]
    public let privateKey: PrivateKeyMaterial
    /// The friendly name the file gives the identity, if any.
    public let friendlyName: String?
}

/// Decoding and encoding of PFX files through OpenSSL.
public enum PFX {
    /// Decodes `data` with `password`; `nil` and an empty password both try the file's
    /// password-less forms. `source` names the file in errors.
    ///
    /// Files from OpenSSL 3 (PBES2, AES-256, SHA-256 MAC) decode directly. Legacy
    /// files (RC2-40 and 3DES, SHA-1 MAC) decode through a private OpenSSL library
    /// context that has the legacy provider loaded. That context is the calling
    /// thread's default only while this function runs, so the rest of the process
    /// never gets legacy algorithms.
    ///
    /// A file without an integrity check (MAC) is rejected unless `allowMissingMAC` is
    /// true: nothing then shows whether its certificates were altered.
    public static func decode(
        _ data: [UInt8], password: SecretBytes?, source: String, allowMissingMAC: Bool = false
    ) throws -> PFXContents {
        OpenSSLErrorQueue.clear()
        guard !data.isEmpty else {
            throw TokenStoreError(.invalidPFX, "\(source) is empty: expected a PFX (PKCS#12) file")
        }
        guard let legacyContext = OSSL_LIB_CTX_new() else {
            throw TokenStoreError(.openSSL, "creating an OpenSSL library context failed: \(OpenSSLErrorQueue.drain())")
        }
        let defaultProvider = OSSL_PROVIDER_load(legacyContext, "default")
        let legacyProvider = OSSL_PROVIDER_load(legacyContext, "legacy")
        let previous = OSSL_LIB_CTX_set0_default(legacyContext)
        defer {
            OSSL_LIB_CTX_set0_default(previous)
            if let legacyProvider { OSSL_PROVIDER_unload(legacyProvider) }
            if let defaultProvider { OSSL_PROVIDER_unload(defaultProvider) }
            OSSL_LIB_CTX_free(legacyContext)
            OpenSSLErrorQueue.clear()
        }

        let parsed = data.withUnsafeBufferPointer { buffer -> OpaquePointer? in
            var pointer: UnsafePointer<UInt8>? = buffer.baseAddress
            return d2i_PKCS12(nil, &pointer, buffer.count)
        }
        guard let pkcs12 = parsed else {
            throw TokenStoreError(
                .invalidPFX,
                "\(source) is not a valid PFX (PKCS#12) file: it is truncated or in another format; export the identity again as a .pfx/.p12 file"
            )
        }
        defer { PKCS12_free(pkcs12) }

        guard PKCS12_mac_present(pkcs12) == 1 || allowMissingMAC else {
            throw TokenStoreError(
                .invalidPFX,
                "\(source) has no integrity check (MAC), so it may have been altered: export it again with a password, "
                    + "or pass --allow-missing-mac if you trust where it came from")
        }
        let passwordBuffer = PasswordBuffer(password)
        let passwordPointer = try choosePassword(pkcs12, passwordBuffer, source: source)

        var key: OpaquePointer?
        var certificate: OpaquePointer?
        var authorities: OpaquePointer?
        OpenSSLErrorQueue.clear()
        guard PKCS12_parse(pkcs12, passwordPointer, &key, &certificate, &authorities) == 1 else {
            let queue = OpenSSLErrorQueue.drain()
            if queue.contains("unsupported") {
                throw TokenStoreError(
                    .invalidPFX,
                    "cannot decode \(source): it uses an encryption algorithm that OpenSSL does not support (\(queue)); export it again with AES-256 or 3DES"
                )
            }
            if queue.contains("decrypt") || queue.contains("bad decrypt") {
                throw TokenStoreError(
                    .wrongPassword,
                    "wrong password for \(source): set TOKENTLS_PFX_PASSWORD, use --password-file, or type it at the prompt")
            }
            throw TokenStoreError(.invalidPFX, "cannot decode \(source): \(queue)")
        }
        defer {
            if let key { EVP_PKEY_free(key) }
            if let certificate { X509_free(certificate) }
            tokentls_x509_stack_free_all(authorities)
        }

        var chain: [Certificate] = []
        for index in 0..<tokentls_x509_stack_count(authorities) {
            if let authority = tokentls_x509_stack_value(authorities, index) {
                chain.append(try Certificate(x509: authority))
            }
        }
        guard let key else {
            throw TokenStoreError(
                .missingOrMismatchedKey,
                "\(source) contains no private key: export the identity again with its private key")
        }
        guard let certificate else {
            throw TokenStoreError(
                .missingOrMismatchedKey,
                "the private key in \(source) matches none of its \(chain.count) certificates: export the identity again")
        }
        guard X509_check_private_key(certificate, key) == 1 else {
            throw TokenStoreError(
                .missingOrMismatchedKey,
                "the private key in \(source) does not match its certificate: export the identity again")
        }
        let material = try PrivateKeyMaterial.extract(from: key, source: source)
        let leaf: Certificate
        do {
            leaf = try Certificate(x509: certificate)
        } catch {
            material.wipe()
            throw error
        }
        var friendlyNameLength: Int32 = 0
        let friendlyName = X509_alias_get0(certificate, &friendlyNameLength).map {
            String(decoding: UnsafeBufferPointer(start: $0, count: Int(friendlyNameLength)), as: UTF8.self)
        }
        return PFXContents(certificate: leaf, chain: chain, privateKey: material, friendlyName: friendlyName)
    }

    /// Picks the password form that verifies the file's MAC. A file without a MAC
    /// takes the password as given.
    private static func choosePassword(
        _ pkcs12: OpaquePointer, _ password: PasswordBuffer, source: String
    ) throws -> UnsafePointer<CChar>? {
        guard PKCS12_mac_present(pkcs12) == 1 else {
            return password.pointer ?? password.emptyPointer
        }
        if let pointer = password.pointer, password.length > 0 {
            if PKCS12_verify_mac(pkcs12, pointer, Int32(password.length)) == 1 {
                return pointer
            }
        } else {
            // OpenSSL and Windows write password-less files either with an empty
            // password or with none at all; both must open.
            if PKCS12_verify_mac(pkcs12, nil, 0) == 1 {
                return nil
            }
            if PKCS12_verify_mac(pkcs12, password.emptyPointer, 0) == 1 {
                return password.emptyPointer
            }
        }
        let queue = OpenSSLErrorQueue.drain()
        if queue.contains("unsupported") {
            throw TokenStoreError(
                .invalidPFX,
                "cannot verify \(source): its integrity check uses an algorithm that OpenSSL does not support (\(queue))")
        }
        if password.length == 0 {
            throw TokenStoreError(
                .wrongPassword,
                "\(source) needs a password and none was given: set TOKENTLS_PFX_PASSWORD, use --password-file, or type it at the prompt"
            )
        }
        throw TokenStoreError(
            .wrongPassword,
            "wrong password for \(source): set TOKENTLS_PFX_PASSWORD, use --password-file, or type it at the prompt")
    }

    /// Writes a PFX with AES-256-CBC (PBES2) for key and certificates and a SHA-256 MAC,
    /// the format OpenSSL 3 and current Windows read and write.
    static func encode(
        key: OpaquePointer, certificate: Certificate, chain: [Certificate], password: SecretBytes?, friendlyName: String?
    ) throws -> [UInt8] {
        OpenSSLErrorQueue.clear()
        let passwordBuffer = PasswordBuffer(password)
        let pointer = passwordBuffer.pointer ?? passwordBuffer.emptyPointer
        return try certificate.withX509 { leaf in
            guard let stack = tokentls_x509_stack_new() else {
                throw TokenStoreError(.openSSL, "allocating a certificate list failed")
            }
            defer { tokentls_x509_stack_free_all(stack) }
            for authority in chain {
                try authority.withX509 { x509 in
                    X509_up_ref(x509)
                    guard tokentls_x509_stack_push(stack, x509) == 1 else {
                        X509_free(x509)
                        throw TokenStoreError(.openSSL, "allocating a certificate list failed")
                    }
                }
            }
            let iterations: Int32 = 2048
            guard
                let pkcs12 = PKCS12_create(
                    pointer, friendlyName, key, leaf, stack, NID_aes_256_cbc, NID_aes_256_cbc, iterations, -1, 0)
            else {
                throw TokenStoreError(.openSSL, "building the PFX failed: \(OpenSSLErrorQueue.drain())")
            }
            defer { PKCS12_free(pkcs12) }
            guard PKCS12_set_mac(pkcs12, pointer, -1, nil, 0, iterations, EVP_sha256()) == 1 else {
                throw TokenStoreError(.openSSL, "adding the PFX integrity check failed: \(OpenSSLErrorQueue.drain())")
            }
            return try Certificate.encode { i2d_PKCS12(pkcs12, $0) }
        }
    }
}

/// A NUL-terminated copy of a password for OpenSSL, zeroed when released.
final class PasswordBuffer {
    private let storage: SecretBytes?
    private let empty = SecretBytes(count: 1) { _ in }
    let length: Int

    init(_ password: SecretBytes?) {
        if let password {
            storage = SecretBytes(count: password.count + 1) { buffer in
                password.withUnsafeBytes { source in
                    if source.count > 0 {
                        buffer.baseAddress!.copyMemory(from: source.baseAddress!, byteCount: source.count)
                    }
                }
            }
            length = password.count
        } else {
            storage = nil
            length = 0
        }
    }

    /// The password as a C string, or nil when none was given.
    var pointer: UnsafePointer<CChar>? {
        storage?.withUnsafeBytes { $0.bindMemory(to: CChar.self).baseAddress }
    }

    /// An empty C string.
    var emptyPointer: UnsafePointer<CChar>? {
        empty.withUnsafeBytes { $0.bindMemory(to: CChar.self).baseAddress }
    }
}
