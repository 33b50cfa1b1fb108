import PKCS11
import TokenStore

/// libFuzzer entry point for the PFX and certificate readers.
///
/// Each input goes through `PFX.decode` without a password, which tries the
/// password-less forms and, inside, `PrivateKeyMaterial.extract` when a key decodes.
/// That call accepts files without a MAC: a mutated file with a MAC almost never
/// passes the MAC check, so only MAC-less inputs carry mutations on to the bag
/// parsing, the decryption and the key extraction. An input that `decode` rejects
/// with `.wrongPassword` is decoded once more with a fixed non-empty password and
/// the default MAC rule, which covers those paths too. The same bytes then go
/// through `Certificate.readAll` as PEM or DER.
///
/// Thrown errors are the expected outcome for most inputs. A finding is a crash, a
/// sanitizer report, a timeout, or an error of a type other than `TokenStoreError`.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPFX(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size > 0 && data != nil ? Array(UnsafeBufferPointer(start: data, count: size)) : []

    do {
        let contents = try PFX.decode(bytes, password: nil, source: "fuzz input", allowMissingMAC: true)
        checkDecoded(contents)
    } catch let error as TokenStoreError where error.kind == .wrongPassword {
        decodeWithPassword(bytes)
    } catch {
        requireStoreError(error, "PFX.decode")
    }

    do {
        let certificates = try Certificate.readAll(bytes, source: "fuzz input")
        precondition(!certificates.isEmpty, "Certificate.readAll returned no certificate and no error")
    } catch {
        requireStoreError(error, "Certificate.readAll")
    }
    return 0
}

private func decodeWithPassword(_ bytes: [UInt8]) {
    do {
        let contents = try PFX.decode(bytes, password: SecretBytes(utf8: "fuzz-password"), source: "fuzz input")
        checkDecoded(contents)
    } catch {
        requireStoreError(error, "PFX.decode with a password")
    }
}

/// Reads every field of a decoded PFX, as an import does, and wipes the key.
private func checkDecoded(_ contents: PFXContents) {
    _ = contents.certificate.sha1Thumbprint
    _ = contents.certificate.keyDescription
    for authority in contents.chain {
        _ = authority.subject
    }
    contents.privateKey.wipe()
}

private func requireStoreError(_ error: any Error, _ call: String) {
    guard error is TokenStoreError else {
        fatalError("\(call) threw \(type(of: error)), expected TokenStoreError: \(error)")
    }
}
