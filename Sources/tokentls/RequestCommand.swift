import Foundation
import PKCS11
import TokenStore
import TokenTLS

/// `tokentls request URL`: an HTTPS request with curl's familiar options, signed by a token key.
enum RequestCommand {
    static let flags: Set<String> = [
        "-i", "--include", "-v", "--verbose", "-L", "--location", "-f", "--fail", "--tlsv1.2", "--tlsv1.3", "-s", "--silent",
        "--root-store-only", "--no-client-certificate",
    ]
    static let valued: Set<String> = TokenOptions.valued.union([
        "--thumbprint", "--key-uri", "-X", "--request", "-H", "--header", "-d", "--data", "--data-binary", "-o", "--output",
        "--cacert", "--resolve", "--connect-timeout", "-m", "--max-time", "--tls-max",
    ])

    static func run(_ arguments: [String], output: Output) throws {
        let parsed = try Arguments(arguments, flags: flags, valued: valued)
        guard parsed.operands.count == 1 else {
            throw UsageError("'request' needs exactly one URL, got \(parsed.operands.count)")
        }
        var request = try makeRequest(parsed, url: parsed.operands[0])
        let verbose = parsed.has("-v", "--verbose")
        request.verbose = verbose

        let identity = try openIdentity(parsed)
        if let identity, verbose {
            output.diagnostic(
                "* tokentls: client certificate \(identity.identity.thumbprint) (\(identity.identity.certificate.subject)), "
                    + "signature algorithms \(identity.signatureAlgorithms)")
        }
        let token = try resolveToken(parsed, verbose: verbose, output: output)
        if let token {
            request.trustAnchors = try TrustStore(token: token).anchors().map(\.certificate)
            if verbose {
                output.diagnostic("* tokentls: \(request.trustAnchors.count) trust anchor(s) from the root store of \(token)")
            }
        }
        request.useSystemRoots = !parsed.has("--root-store-only")

        let client: HTTPClient
        var selection: AutomaticSelection?
        if let identity {
            client = HTTPClient(identity: identity)
        } else if let token, !parsed.has("--no-client-certificate") {
            let options = TokenOptions(parsed)
            let automatic = AutomaticSelection(token: token) { try options.openStore(on: token) }
            selection = automatic
            client = HTTPClient(selection: automatic)
        } else {
            client = HTTPClient(identity: nil)
        }
        let response: HTTPResponse
        do {
            response = try client.perform(request)
        } catch let error as TLSError {
            reportSelection(selection, verbose: verbose, output: output)
            throw CommandError(status(for: error), error.message)
        } catch {
            reportSelection(selection, verbose: verbose, output: output)
            throw error
        }
        reportSelection(selection, verbose: verbose, output: output)
        let used = identity ?? client.lastSelectedIdentity
        if verbose {
            let signatures = used.map { ", token signatures: \($0.signatureCount)" } ?? ", no client certificate"
            output.diagnostic(
                "* tokentls: HTTP \(response.status) over \(response.tlsVersion ?? "an unknown TLS version")\(signatures)")
        }
        if used == nil, let selection, response.status == 400, !selection.report.isEmpty {
            output.diagnostic("tokentls: note: automatic selection: \(selection.report.last ?? "")")
        }
        explain(response, identity: used, output: output)
        if parsed.has("-f", "--fail"), response.status >= 400 {
            throw CommandError(.httpError, "the server at \(request.url) returned HTTP \(response.status)")
        }
        var data = Data()
        if parsed.has("-i", "--include") {
            data.append(contentsOf: response.rawHeaders)
        }
        data.append(contentsOf: response.body)
        if let path = parsed.value("-o", "--output") {
            guard FileManager.default.createFile(atPath: path, contents: data) else {
                throw CommandError(.failure, "cannot write the response to \(path): check the folder and permissions")
            }
        } else {
            output.write(data)
        }
    }

    /// Writes notes on standard error for responses that mean the client certificate was missing or refused.
    private static func explain(_ response: HTTPResponse, identity: ClientIdentity?, output: Output) {
        guard response.status == 400 else { return }
        let body = String(decoding: response.body, as: UTF8.self)
        if body.contains("No required SSL certificate was sent") {
            let hint =
                identity == nil
                ? "choose one with --thumbprint or --key-uri, or leave out --no-client-certificate"
                : "the server accepted none of the signature algorithms the token offers (\(identity!.signatureAlgorithms))"
            output.diagnostic("tokentls: note: the server requires a client certificate and none was sent: \(hint)")
        } else if body.contains("The SSL certificate error") {
            output.diagnostic(
                "tokentls: note: the server rejected the client certificate: it does not trust its issuer, or the certificate is expired or not yet valid"
            )
        }
    }

    private static func reportSelection(_ selection: AutomaticSelection?, verbose: Bool, output: Output) {
        guard verbose, let selection else { return }
        for line in selection.report {
            output.diagnostic("* tokentls: \(line)")
        }
    }

    /// Finds the token for the root store and automatic selection. Without --token or
    /// --module, a machine with no usable token goes on without one: requests then
    /// trust the system CA bundle and --cacert only, and send no client certificate.
    private static func resolveToken(_ parsed: Arguments, verbose: Bool, output: Output) throws -> Token? {
        let options = TokenOptions(parsed)
        do {
            let (module, _) = try options.loadModule()
            return try options.findToken(module)
        } catch {
            guard options.token == nil, options.modulePath == nil, !parsed.has("--root-store-only") else {
                throw error
            }
            let reason = CommandError.from(error).description
            if reason.contains("several tokens are present") {
                // Worth saying without -v: the user has tokens, but none is used.
                output.diagnostic("tokentls: note: no root store and no automatic selection: \(reason)")
            } else if verbose {
                output.diagnostic("* tokentls: no token in use, so no root store and no automatic selection (\(reason))")
            }
            return nil
        }
    }

    private static func status(for error: TLSError) -> CommandError.Status {
        switch error.kind {
        case .configuration: .failure
        case .handshake, .serverCertificate: .tls
        case .connection: .connection
        case .request: .usage
        }
    }

    private static func openIdentity(_ parsed: Arguments) throws -> ClientIdentity? {
        let thumbprint = parsed.value("--thumbprint")
        let keyURI = try parsed.value("--key-uri").map { try PKCS11URI(parsing: $0) }
        if thumbprint != nil, keyURI != nil {
            throw UsageError("give either --thumbprint or --key-uri, not both")
        }
        guard thumbprint != nil || keyURI != nil else {
            return nil
        }
        var options = TokenOptions(parsed)
        if let keyURI {
            options = options.applying(keyURI)
        }
        let store = try options.openStore()
        let identity = try thumbprint.map { try store.identity(thumbprint: $0) } ?? store.identity(uri: keyURI!)
        let certificate = identity.certificate
        if !certificate.isValid() {
            let formatter = ISO8601DateFormatter()
            let period = "\(formatter.string(from: certificate.notBefore)) to \(formatter.string(from: certificate.notAfter))"
            Output().diagnostic(
                "tokentls: warning: \(identity.thumbprint) (\(certificate.subject)) is not valid now (valid \(period)); the server will likely reject it"
            )
        }
        return try ClientIdentity(store: store, identity: identity)
    }

    private static func makeRequest(_ parsed: Arguments, url: String) throws -> HTTPRequest {
        var request = HTTPRequest(url: url)
        request.method = parsed.value("-X", "--request")
        request.headers = parsed.allValues("-H") + parsed.allValues("--header")
        request.caFile = parsed.value("--cacert")
        request.resolve = parsed.allValues("--resolve")
        request.followRedirects = parsed.has("-L", "--location")
        if let caFile = request.caFile, !FileManager.default.isReadableFile(atPath: caFile) {
            throw UsageError("cannot read the --cacert file \(caFile)")
        }
        for entry in request.resolve where entry.split(separator: ":").count < 3 {
            throw UsageError("invalid --resolve \"\(entry)\": expected HOST:PORT:ADDRESS, e.g. myhost:8889:127.0.0.1")
        }
        request.connectTimeout = try seconds(parsed.value("--connect-timeout"), option: "--connect-timeout")
        request.maxTime = try seconds(parsed.value("-m", "--max-time"), option: "--max-time")

        var body: [UInt8]?
        for value in parsed.allValues("-d") + parsed.allValues("--data") {
            var part = try data(value, option: "--data")
            part.removeAll { $0 == 0x0A || $0 == 0x0D }
            body = body.map { $0 + [UInt8(ascii: "&")] + part } ?? part
        }
        for value in parsed.allValues("--data-binary") {
            let part = try data(value, option: "--data-binary")
            body = body.map { $0 + [UInt8(ascii: "&")] + part } ?? part
        }
        request.body = body

        if parsed.has("--tlsv1.3") {
            request.minimumTLS = .tls13
        } else if parsed.has("--tlsv1.2") {
            request.minimumTLS = .tls12
        }
        if let maximum = parsed.value("--tls-max") {
            guard let version = TLSVersion(rawValue: maximum) else {
                throw UsageError("invalid --tls-max \"\(maximum)\": use 1.2 or 1.3")
            }
            request.maximumTLS = version
        }
        if let minimum = request.minimumTLS, let maximum = request.maximumTLS, maximum < minimum {
            throw UsageError(
                "--tls-max \(maximum.rawValue) is below the minimum TLS \(minimum.rawValue) set by --tlsv\(minimum.rawValue)")
        }
        return request
    }

    /// Returns a -d/--data-binary value: the text, or the content of FILE for "@FILE".
    private static func data(_ value: String, option: String) throws -> [UInt8] {
        guard value.hasPrefix("@") else {
            return Array(value.utf8)
        }
        let path = String(value.dropFirst())
        guard let contents = FileManager.default.contents(atPath: path) else {
            throw UsageError("cannot read the \(option) file \(path)")
        }
        return Array(contents)
    }

    private static func seconds(_ value: String?, option: String) throws -> Double? {
        guard let value else { return nil }
        guard let number = Double(value), number > 0, number.isFinite else {
            throw UsageError("invalid \(option) \"\(value)\": expected a positive number of seconds")
        }
        return number
    }
}
