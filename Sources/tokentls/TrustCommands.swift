import Foundation
import PKCS11
import TokenStore

/// `tokentls trust add|list|remove` and `tokentls verify`.
enum TrustCommands {
    static func run(_ arguments: [String], output: Output) throws {
        guard let subcommand = arguments.first else {
            throw UsageError("missing subcommand: use 'tokentls trust add FILE', 'trust list' or 'trust remove THUMBPRINT'")
        }
        let rest = Array(arguments.dropFirst())
        switch subcommand {
        case "add": try add(rest, output: output)
        case "list": try list(rest, output: output)
        case "remove": try remove(rest, output: output)
        default: throw UsageError("unknown subcommand 'trust \(subcommand)': use 'trust add', 'trust list' or 'trust remove'")
        }
    }

    private static func openTrustStore(_ parsed: Arguments) throws -> TrustStore {
        let options = TokenOptions(parsed)
        let (module, _) = try options.loadModule()
        return TrustStore(token: try options.findToken(module))
    }

    private static func readSecurityOfficerPIN(_ parsed: Arguments, token: Token) throws -> SecretBytes {
        try SecretInput.read(
            variable: "TOKENTLS_SO_PIN", file: parsed.value("--so-pin-file"),
            prompt: "Security officer PIN for token \"\(token.label)\": ",
            what: "security officer PIN", fileOption: "--so-pin-file")
    }

    private static func add(_ arguments: [String], output: Output) throws {
        let parsed = try Arguments(arguments, flags: [], valued: TokenOptions.valued.union(["--so-pin-file"]))
        guard parsed.operands.count == 1 else {
            throw UsageError(
                "'trust add' needs exactly one FILE (PEM or DER, one or more certificates), got \(parsed.operands.count)")
        }
        let path = parsed.operands[0]
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CommandError(.failure, "cannot read \(path): no such file or no permission")
        }
        let certificates = try Certificate.readAll(Array(data), source: path)
        let store = try openTrustStore(parsed)
        let pin = try readSecurityOfficerPIN(parsed, token: store.token)
        defer { pin.wipe() }
        for result in try store.add(certificates, securityOfficerPIN: pin, source: path) {
            switch result {
            case .added(let certificate):
                output.line(
                    "Added to the root store of token \"\(store.token.label)\": \(certificate.sha1Thumbprint)  \(certificate.subject)"
                )
            case .alreadyPresent(let certificate):
                output.line("Already in the root store, nothing written: \(certificate.sha1Thumbprint)  \(certificate.subject)")
            }
        }
    }

    private static func list(_ arguments: [String], output: Output) throws {
        let parsed = try Arguments(arguments, flags: ["--json"], valued: TokenOptions.valued)
        let store = try openTrustStore(parsed)
        let anchors = try store.anchors()
        if parsed.has("--json") {
            try output.json(anchors.map(AnchorRow.init))
            return
        }
        if anchors.isEmpty {
            output.line("The root store of token \"\(store.token.label)\" is empty.")
            return
        }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withFullDate]
        let rows = anchors.map {
            [
                $0.thumbprint, formatter.string(from: $0.certificate.notBefore), formatter.string(from: $0.certificate.notAfter),
                $0.certificate.subject,
            ]
        }
        output.table(header: ["Thumbprint", "Not before", "Not after", "Subject"], rows: rows)
    }

    private static func remove(_ arguments: [String], output: Output) throws {
        let parsed = try Arguments(arguments, flags: [], valued: TokenOptions.valued.union(["--so-pin-file"]))
        guard parsed.operands.count == 1 else {
            throw UsageError("'trust remove' needs exactly one THUMBPRINT, got \(parsed.operands.count)")
        }
        let store = try openTrustStore(parsed)
        let pin = try readSecurityOfficerPIN(parsed, token: store.token)
        defer { pin.wipe() }
        let removed = try store.remove(thumbprint: parsed.operands[0], securityOfficerPIN: pin)
        output.line(
            "Removed from the root store of token \"\(store.token.label)\": \(removed.sha1Thumbprint)  \(removed.subject)")
    }

    struct AnchorRow: Encodable {
        let thumbprint: String
        let sha256Thumbprint: String
        let subject: String
        let notBefore: Date
        let notAfter: Date

        init(_ anchor: TrustStore.Anchor) {
            thumbprint = anchor.thumbprint
            sha256Thumbprint = anchor.certificate.sha256Thumbprint
            subject = anchor.certificate.subject
            notBefore = anchor.certificate.notBefore
            notAfter = anchor.certificate.notAfter
        }
    }

    // MARK: - verify

    static func verify(_ arguments: [String], output: Output) throws {
        let parsed = try Arguments(
            arguments, flags: ["--root-store-only"], valued: TokenOptions.valued.union(["--policy", "--dns-name"]))
        guard parsed.operands.count == 1 else {
            throw UsageError("'verify' needs exactly one THUMBPRINT or FILE, got \(parsed.operands.count)")
        }
        let target = parsed.operands[0]
        let dnsName = parsed.value("--dns-name")
        let policyName = parsed.value("--policy") ?? (dnsName == nil ? "ssl-client" : "ssl-server")
        guard let policy = VerificationPolicy(rawValue: policyName) else {
            throw UsageError("invalid --policy \"\(policyName)\": use ssl-client or ssl-server")
        }

        let options = TokenOptions(parsed)
        let (module, _) = try options.loadModule()
        let token = try options.findToken(module)
        let tokenCertificates = try TokenStore.publicCertificates(on: token)
        let anchors = try TrustStore(token: token).anchors().map(\.certificate)

        var certificate: Certificate
        var intermediates = tokenCertificates.filter(\.isCA)
        if let data = FileManager.default.contents(atPath: target) {
            let all = try Certificate.readAll(Array(data), source: target)
            certificate = all[0]
            intermediates += all.dropFirst()
        } else if let thumbprint = bytes(fromHex: target), thumbprint.count == 20 {
            let wanted = hexString(thumbprint)
            guard let found = (tokenCertificates + anchors).first(where: { $0.sha1Thumbprint == wanted }) else {
                throw CommandError(
                    .failure,
                    "no certificate with thumbprint \(wanted) in \(token): run 'tokentls list' or give a certificate FILE")
            }
            certificate = found
        } else {
            throw UsageError("\(target) is neither a readable certificate file nor a 40-digit SHA-1 thumbprint")
        }

        let verifier = CertificateVerifier(
            anchors: anchors, intermediates: intermediates, useSystemRoots: !parsed.has("--root-store-only"))
        let result = try verifier.verify(certificate, policy: policy, dnsName: dnsName)
        output.line("Chain:")
        for (index, link) in result.chain.enumerated() {
            output.line("  \(index)  \(link.sha1Thumbprint)  \(link.subject)")
        }
        let scope = dnsName.map { "\(policy.rawValue), DNS name \($0)" } ?? policy.rawValue
        if result.isValid {
            output.line("Result: valid for \(scope)")
            return
        }
        output.line("Result: not valid for \(scope)")
        for problem in result.problems {
            output.line("  - \(problem)")
        }
        throw CommandError(
            .failure,
            "\(certificate.subject) (\(certificate.sha1Thumbprint)) is not valid for \(scope): \(result.problems.count) problem(s) listed above"
        )
    }
}
