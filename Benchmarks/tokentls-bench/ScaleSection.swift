import CP11Kit
import Foundation
import PKCS11
import TokenStore
import TokenTLS

/// Section 4: the cost of listing, lookup by thumbprint, `ClientIdentity` creation,
/// automatic selection and import as a token grows to 1, 100 and 1,000 identities.
///
/// The identities are P-256 keys with certificates issued in process by the client
/// CA of `scripts/make-certs`, each with a different expiry. The first 100, and the
/// last five before each measured size, are imported from PFX files through
/// `PFX.decode` and `TokenStore.importIdentity`, as `tokentls import-pfx` does. The
/// ones between are written with `C_CreateObject` and the attributes that import
/// writes, because import lists the whole token twice per file, so 1,000 imports
/// would take minutes of their own.
func runScaleSection(_ bench: Bench) throws {
    let report = bench.report
    let sizes = bench.options.quick ? [1, 50] : [1, 100, 1000]
    // Automatic selection builds every candidate's chain from a new listing of the
    // token, so its first request grows with the square of the identity count.
    let selectionSizes = bench.options.fullSelection ? sizes : sizes.filter { $0 <= 100 }
    report.beginSection("4. Scale: identities in one token")
    let environment = bench.environment
    let store = try environment.makeToken(label: "scale")
    let factory = try IdentityFactory(
        authorityKey: environment.certificate("client-ca.key"), authorityCertificate: environment.certificate("client-ca.crt"))
    let password = SecretBytes(utf8: factory.password)
    var thumbprints: [String] = []
    var decodeSeconds: [Double] = []
    var writeSeconds: [Double] = []
    let repetitions = bench.options.quick ? 3 : 5
    let importedAtMost = 100
    let importedBeforeEachSize = 5

    for size in sizes {
        progress("  filling the token to \(size) identities")
        let populationStart = monotonicSeconds()
        while thumbprints.count < size {
            let index = thumbprints.count
            let pfx = try factory.makePFX(index: index)
            if index >= importedAtMost && index < size - importedBeforeEachSize {
                let contents = try PFX.decode(pfx, password: password, source: "identity \(index)")
                thumbprints.append(try writeWithoutImport(contents, store: store))
                continue
            }
            let start = monotonicSeconds()
            let contents = try PFX.decode(pfx, password: password, source: "identity \(index)")
            let decoded = monotonicSeconds()
            let result = try store.importIdentity(contents, exportable: false)
            writeSeconds.append(monotonicSeconds() - decoded)
            decodeSeconds.append(decoded - start)
            guard case .imported(let identity, _) = result else {
                throw BenchFailure("identity \(index) was already in the token: the certificates are not distinct")
            }
            thumbprints.append(identity.thumbprint)
        }
        progress(String(format: "  %d identities in the token after %.1f s", size, monotonicSeconds() - populationStart))
        let label = "\(size) identit\(size == 1 ? "y" : "ies")"
        let recent = min(importedBeforeEachSize, size)
        report.add(
            "\(label): import one PFX, PFX.decode", unit: "ms", Summary(decodeSeconds.suffix(recent).map { $0 * 1000 }))
        report.add(
            "\(label): import one PFX, TokenStore.importIdentity", unit: "ms",
            Summary(writeSeconds.suffix(recent).map { $0 * 1000 }))

        progress("  listing and lookup")
        let withKey = try store.identities().filter(\.hasPrivateKey).count
        guard withKey == size else {
            throw BenchFailure("the token lists \(withKey) identities with a key, expected \(size)")
        }
        let list = try measureDurations(repetitions) { _ = try store.identities() }
        report.add("\(label): list, TokenStore.identities()", unit: "ms", Summary(list.map { $0 * 1000 }))
        let target = try store.identity(thumbprint: thumbprints[size / 2])
        let lookup = try measureDurations(repetitions) { _ = try store.identity(thumbprint: target.thumbprint) }
        report.add(
            "\(label): select by thumbprint, TokenStore.identity(thumbprint:)", unit: "ms", Summary(lookup.map { $0 * 1000 }))
        let creation = try measureDurations(repetitions) { _ = try ClientIdentity(store: store, identity: target) }
        report.add("\(label): ClientIdentity(store:identity:)", unit: "ms", Summary(creation.map { $0 * 1000 }))

        if selectionSizes.contains(size) {
            try measureAutomaticSelection(
                bench, store: store, expected: try store.identity(thumbprint: thumbprints[size - 1]), label: label,
                repetitions: repetitions)
        }
    }
    var note =
        "Every identity is a P-256 key, its certificate and the client CA in one PFX; the CA certificate is written once. "
        + "Import rows are the median of the imports that brought the token to that size (at most \(importedBeforeEachSize))."
    if sizes.last! - importedBeforeEachSize > importedAtMost {
        note +=
            " Identities \(importedAtMost + 1) to \(sizes.last! - importedBeforeEachSize) were written with C_CreateObject and "
            + "the attributes that import writes."
    }
    report.note(note)
    if selectionSizes != sizes {
        report.note(
            "Automatic selection was measured up to \(selectionSizes.last!) identities; --full-selection measures it at "
                + "\(sizes.last!) too, which takes several minutes because its first request lists the token once per identity.")
    }
    report.endSection()
}

/// Writes the three objects that `TokenStore.importIdentity` writes for a P-256
/// identity whose CA certificate is already in the token, with the same attributes,
/// and returns the certificate's thumbprint.
private func writeWithoutImport(_ contents: PFXContents, store: TokenStore) throws -> String {
    defer { contents.privateKey.wipe() }
    guard case .ec(let key) = contents.privateKey.components else {
        throw BenchFailure("the generated identities have P-256 keys")
    }
    let certificate = contents.certificate
    let id = certificate.keyIdentifier
    let label = contents.friendlyName ?? certificate.sha1Thumbprint
    let ecdsa = withUnsafeBytes(of: CK_MECHANISM_TYPE(CKM_ECDSA)) { Array($0) }
    // The public point as a DER OCTET STRING. Its 65 bytes fit the short length form.
    let point = [0x04, UInt8(key.publicPoint.count)] + key.publicPoint
    try store.pool.withSession { session in
        _ = try session.createObject([
            .ulong(UInt(CKA_CLASS), UInt(CKO_PRIVATE_KEY)), .bool(UInt(CKA_TOKEN), true), .bool(UInt(CKA_PRIVATE), true),
            .bool(UInt(CKA_SENSITIVE), true), .bool(UInt(CKA_EXTRACTABLE), false), .bool(UInt(CKA_SIGN), true),
            .bool(UInt(CKA_DECRYPT), false), .bool(UInt(CKA_UNWRAP), false), .bool(UInt(CKA_DERIVE), false),
            .bool(UInt(CKA_SIGN_RECOVER), false), .bytes(UInt(CKA_ID), id), .string(UInt(CKA_LABEL), label),
            .bytes(UInt(CKA_SUBJECT), certificate.subjectDER), .ulong(UInt(CKA_KEY_TYPE), UInt(CKK_EC)),
            .bytes(UInt(CKA_ALLOWED_MECHANISMS), ecdsa), .bytes(UInt(CKA_EC_PARAMS), key.parameters),
            .secret(UInt(CKA_VALUE), key.privateValue),
        ])
        _ = try session.createObject([
            .ulong(UInt(CKA_CLASS), UInt(CKO_PUBLIC_KEY)), .bool(UInt(CKA_TOKEN), true), .bool(UInt(CKA_PRIVATE), false),
            .bool(UInt(CKA_VERIFY), true), .bool(UInt(CKA_ENCRYPT), false), .bool(UInt(CKA_WRAP), false),
            .bytes(UInt(CKA_ID), id), .string(UInt(CKA_LABEL), label), .bytes(UInt(CKA_SUBJECT), certificate.subjectDER),
            .ulong(UInt(CKA_KEY_TYPE), UInt(CKK_EC)), .bytes(UInt(CKA_EC_PARAMS), key.parameters),
            .bytes(UInt(CKA_EC_POINT), point),
        ])
        _ = try session.createObject([
            .ulong(UInt(CKA_CLASS), UInt(CKO_CERTIFICATE)), .ulong(UInt(CKA_CERTIFICATE_TYPE), UInt(CKC_X_509)),
            .bool(UInt(CKA_TOKEN), true), .bool(UInt(CKA_PRIVATE), false), .bool(UInt(CKA_MODIFIABLE), true),
            .ulong(UInt(CKA_CERTIFICATE_CATEGORY), 1), .bytes(UInt(CKA_ID), id), .string(UInt(CKA_LABEL), label),
            .bytes(UInt(CKA_SUBJECT), certificate.subjectDER), .bytes(UInt(CKA_ISSUER), certificate.issuerDER),
            .bytes(UInt(CKA_SERIAL_NUMBER), certificate.serialNumberDER), .bytes(UInt(CKA_VALUE), certificate.der),
        ])
    }
    return certificate.sha1Thumbprint
}

/// Measures automatic selection against `store`: the first request of a new
/// `AutomaticSelection` (which lists the token and builds every candidate's chain)
/// and later requests (which reuse the candidates), against an explicit identity.
private func measureAutomaticSelection(
    _ bench: Bench, store: TokenStore, expected: Identity, label: String, repetitions: Int
) throws {
    let report = bench.report
    let request = bench.mtlsRequest
    progress("  automatic selection, first request")
    var first: [Double] = []
    for _ in 0..<repetitions {
        let selection = AutomaticSelection { store }
        let client = HTTPClient(selection: selection)
        let start = monotonicSeconds()
        try performChecked(client, request)
        first.append(monotonicSeconds() - start)
        guard client.lastSelectedIdentity?.identity.thumbprint == expected.thumbprint else {
            throw BenchFailure(
                "automatic selection chose \(client.lastSelectedIdentity?.identity.thumbprint ?? "nothing"), expected the latest expiry \(expected.thumbprint)"
            )
        }
    }
    report.add("\(label): automatic selection, first request", unit: "ms", Summary(first.map { $0 * 1000 }))

    progress("  automatic selection, later requests")
    let selecting = HTTPClient(selection: AutomaticSelection { store })
    try performChecked(selecting, request)
    let explicit = HTTPClient(identity: try ClientIdentity(store: store, identity: expected))
    let schedule = Schedule(rounds: repetitions, seconds: bench.networkSchedule.seconds / 2, warmUpSeconds: 0.05)
    let result = try compare(
        [
            Contender(name: "selection") { try measureRate(seconds: $0) { try performChecked(selecting, request) } },
            Contender(name: "explicit") { try measureRate(seconds: $0) { try performChecked(explicit, request) } },
        ], schedule)
    report.add("\(label): HTTPClient, automatic selection, later requests", unit: "requests/s", result.summary("selection"))
    report.add("\(label): HTTPClient, identity given", unit: "requests/s", result.summary("explicit"))
    report.addRatio("\(label): automatic selection ÷ identity given", result.ratio("selection", over: "explicit"))
}
