import Foundation
import PKCS11
import TokenStore

/// `import-pfx`, `list`, `remove` and `export-pfx`.
enum IdentityCommands {
    static func importPFX(_ arguments: [String], output: Output) throws {
        let parsed = try Arguments(
            arguments, flags: ["--exportable", "--allow-missing-mac"],
            valued: TokenOptions.valued.union(["--label", "--password-file"]))
        guard parsed.operands.count == 1 else {
            throw UsageError("'import-pfx' needs exactly one FILE, got \(parsed.operands.count)")
        }
        let path = parsed.operands[0]
        let data = try readInputFile(path)
        let options = TokenOptions(parsed)
        // Open the token first, so a wrong PIN or a missing token is reported before
        // the password is asked for.
        let store = try options.openStore()
        let password = try readPFXPassword(parsed, prompt: "Password for \(path) (empty for none): ")
        defer { password?.wipe() }
        let contents = try PFX.decode(
            Array(data), password: password, source: path, allowMissingMAC: parsed.has("--allow-missing-mac"))
        password?.wipe()
        let result = try store.importIdentity(contents, exportable: parsed.has("--exportable"), label: parsed.value("--label"))
        let identity = result.identity
        switch result {
        case .imported:
            output.line("Imported into token \"\(store.token.label)\":")
        case .alreadyPresent:
            output.line("Already in token \"\(store.token.label)\", nothing written:")
        }
        output.table(header: ["Thumbprint", "Subject"], rows: [[identity.thumbprint, identity.certificate.subject]])
    }

    /// Reads the PFX password from TOKENTLS_PFX_PASSWORD, --password-file or the terminal.
    /// Without any of them and without a terminal, the file is tried password-less.
    static func readPFXPassword(_ parsed: Arguments, prompt: String) throws -> SecretBytes? {
        if getenv("TOKENTLS_PFX_PASSWORD") == nil, parsed.value("--password-file") == nil {
            return try SecretInput.promptTerminal(prompt)
        }
        return try SecretInput.read(
            variable: "TOKENTLS_PFX_PASSWORD", file: parsed.value("--password-file"), prompt: prompt, what: "PFX password",
            fileOption: "--password-file", allowEmpty: true)
    }

    /// Reads a file named on the command line, saying which of the usual reasons stops it.
    static func readInputFile(_ path: String) throws -> Data {
        guard let data = FileManager.default.contents(atPath: path) else {
            let reason = FileManager.default.fileExists(atPath: path) ? "permission denied or not a regular file" : "no such file"
            throw CommandError(.failure, "cannot read \(path): \(reason)")
        }
        return data
    }

    static func list(_ arguments: [String], output: Output) throws {
        let parsed = try Arguments(arguments, flags: ["--json"], valued: TokenOptions.valued)
        guard parsed.operands.isEmpty else {
            throw UsageError("unexpected argument '\(parsed.operands[0])' for 'list'")
        }
        let store = try TokenOptions(parsed).openStore()
        let identities = try store.identities()
        let leftovers = try store.leftoverKeys()
        if parsed.has("--json") {
            try output.json(identities.map(IdentityRow.init))
        } else if identities.isEmpty {
            output.line("No certificates in token \"\(store.token.label)\".")
        } else {
            let rows = identities.map { identity in
                [
                    identity.thumbprint, identity.hasPrivateKey ? identity.certificate.keyDescription : "no key",
                    identity.certificate.subject,
                ]
            }
            output.table(header: ["Thumbprint", "Key", "Subject"], rows: rows)
        }
        for leftover in leftovers {
            output.diagnostic(
                "tokentls: warning: \(leftover.kind) \"\(leftover.label)\" (id \(hexString(leftover.id, uppercase: false))) has no certificate; "
                    + "'tokentls repair' lists such leftovers and removes them with --yes")
        }
    }

    static func remove(_ arguments: [String], output: Output) throws {
        let parsed = try Arguments(arguments, flags: [], valued: TokenOptions.valued)
        guard parsed.operands.count == 1 else {
            throw UsageError("'remove' needs exactly one THUMBPRINT, got \(parsed.operands.count)")
        }
        let store = try TokenOptions(parsed).openStore()
        let identity: Identity
        do {
            identity = try store.identity(thumbprint: parsed.operands[0])
        } catch let error as TokenStoreError where error.kind == .identityNotFound {
            let anchors = try TrustStore(token: store.token).anchors()
            if let wanted = bytes(fromHex: parsed.operands[0]), anchors.contains(where: { $0.thumbprint == hexString(wanted) }) {
                throw CommandError(
                    .failure,
                    "\(hexString(wanted)) is a trust anchor in the root store, not an identity: remove it with 'tokentls trust remove'"
                )
            }
            throw error
        }
        try store.remove(identity)
        output.line("Removed \(identity.thumbprint) (\(identity.certificate.subject)) from token \"\(store.token.label)\"")
    }

    /// Lists key objects without a certificate and, with --yes, destroys them.
    static func repair(_ arguments: [String], output: Output) throws {
        let parsed = try Arguments(arguments, flags: ["--yes"], valued: TokenOptions.valued)
        guard parsed.operands.isEmpty else {
            throw UsageError("unexpected argument '\(parsed.operands[0])' for 'repair'")
        }
        let store = try TokenOptions(parsed).openStore()
        let leftovers = try store.leftoverKeys()
        if leftovers.isEmpty {
            output.line("Token \"\(store.token.label)\" is consistent: every key object has a certificate.")
            return
        }
        let rows = leftovers.map { [$0.kind, hexString($0.id, uppercase: false), $0.label] }
        output.table(header: ["Object", "CKA_ID", "Label"], rows: rows)
        guard parsed.has("--yes") else {
            output.line("\(leftovers.count) key object(s) have no certificate. Run 'tokentls repair --yes' to remove them.")
            return
        }
        let removed = try store.removeLeftovers(leftovers)
        output.line("Removed \(removed) key object(s) from token \"\(store.token.label)\".")
    }

    static func exportPFX(_ arguments: [String], output: Output) throws {
        let parsed = try Arguments(arguments, flags: [], valued: TokenOptions.valued.union(["--out", "--password-file"]))
        guard parsed.operands.count == 1 else {
            throw UsageError("'export-pfx' needs exactly one THUMBPRINT, got \(parsed.operands.count)")
        }
        guard let path = parsed.value("--out") else {
            throw UsageError("'export-pfx' needs --out FILE")
        }
        guard !FileManager.default.fileExists(atPath: path) else {
            throw CommandError(.failure, "\(path) already exists: choose another --out file or remove it first")
        }
        let store = try TokenOptions(parsed).openStore()
        let identity = try store.identity(thumbprint: parsed.operands[0])
        guard identity.isExportable == true else {
            // Refuse before asking for a password the export could never use.
            _ = try store.exportPFX(identity, password: nil)
            return
        }
        // An exported PFX contains the private key, so it is never written without a password.
        let password = try SecretInput.read(
            variable: "TOKENTLS_PFX_PASSWORD", file: parsed.value("--password-file"), prompt: "Password for \(path): ",
            what: "password for the exported PFX", fileOption: "--password-file", confirm: true)
        defer { password.wipe() }
        let pfx = try store.exportPFX(identity, password: password)
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw CommandError(.failure, "cannot create \(path): \(String(cString: strerror(errno)))")
        }
        let written = pfx.withUnsafeBytes { Foundation.write(descriptor, $0.baseAddress, $0.count) }
        close(descriptor)
        guard written == pfx.count else {
            unlink(path)
            throw CommandError(.failure, "writing \(path) failed: \(String(cString: strerror(errno)))")
        }
        output.line("Exported \(identity.thumbprint) (\(identity.certificate.subject)) to \(path)")
    }

    struct IdentityRow: Encodable {
        let thumbprint: String
        let sha256Thumbprint: String
        let subject: String
        let issuer: String
        let serialNumber: String
        let notBefore: Date
        let notAfter: Date
        let keyType: String
        let keySize: Int
        let curve: String?
        let hasPrivateKey: Bool
        let exportable: Bool?
        let label: String
        let certificateURI: String
        let keyURI: String?

        init(_ identity: Identity) {
            let certificate = identity.certificate
            thumbprint = identity.thumbprint
            sha256Thumbprint = certificate.sha256Thumbprint
            subject = certificate.subject
            issuer = certificate.issuer
            serialNumber = certificate.serialNumber
            notBefore = certificate.notBefore
            notAfter = certificate.notAfter
            keyType = certificate.keyType.rawValue
            keySize = certificate.keyBits
            curve = certificate.curveName
            hasPrivateKey = identity.hasPrivateKey
            exportable = identity.isExportable
            label = identity.label
            certificateURI = identity.certificateURI
            keyURI = identity.privateKeyURI
        }
    }
}
