import Foundation
import PKCS11
import TokenStore
import TokenTLS

/// The leak-check driver that scripts/leak-check builds with AddressSanitizer and runs.
///
///     leakcheck handshakes --token LABEL --url URL --cacert FILE --count N THUMBPRINT...
///     leakcheck import --token LABEL FILE...
///
/// `handshakes` makes N mutual-TLS requests through `HTTPClient`, taking the
/// identities in turn and switching between TLS 1.3 and TLS 1.2. It builds a new
/// `ClientIdentity` and `HTTPClient` every `identityLifetime` requests, so that
/// their setup and teardown are repeated too. `import` decodes each PFX file,
/// imports it and removes what it imported, so the same token can be used again.
///
/// The user PIN comes from `TOKENTLS_PIN` and a PFX password, when a file needs one,
/// from `TOKENTLS_PFX_PASSWORD`. LeakSanitizer reports unreachable memory when the
/// process exits. Memory that stays reachable but grows with the number of requests
/// is not a leak to LeakSanitizer, so `handshakes` also compares the live heap after
/// a warm-up with the live heap at the end.
@main
struct LeakCheck {
    static let identityLifetime = 50
    static let warmUpRequests = 100
    /// Live-heap growth per request above which `handshakes` fails. Clean runs of
    /// 1,000 requests with SoftHSM 2.6 and OpenSSL 3.0 measured no growth at all, and
    /// leaking the attribute buffers of each identity lookup measured 97 bytes per
    /// request, so the limit sits between them.
    static let maximumGrowthPerRequest = 32

    static func main() {
        keepModuleMapped()
        let arguments = Array(CommandLine.arguments.dropFirst())
        do {
            switch arguments.first {
            case "handshakes":
                try runHandshakes(try HandshakeOptions(Array(arguments.dropFirst())))
            case "import":
                try runImports(try ImportOptions(Array(arguments.dropFirst())))
            default:
                throw UsageError("expected the command handshakes or import, got \(arguments.first ?? "nothing")")
            }
        } catch {
            Module.finalizeAll()
            FileHandle.standardError.write(Data("leakcheck: \(error)\n".utf8))
            exit(1)
        }
        Module.finalizeAll()
    }

    /// Loads the SoftHSM module once more with `RTLD_NODELETE`, so that it stays mapped
    /// after `Module.finalizeAll()` unloads it. LeakSanitizer reports at exit, and
    /// it can name SoftHSM's frames (and apply their suppressions) only while the
    /// library is mapped.
    static func keepModuleMapped() {
        _ = dlopen(Module.defaultPath, RTLD_NOW | RTLD_NODELETE)
    }

    static func openStore(label: String) throws -> TokenStore {
        guard let pin = ProcessInfo.processInfo.environment["TOKENTLS_PIN"], !pin.isEmpty else {
            throw UsageError("TOKENTLS_PIN is not set: set it to the user PIN of token \(label)")
        }
        let module = try Module.load(path: Module.defaultPath)
        let token = try module.findToken(TokenSelector(label: label))
        return try TokenStore(token: token, pin: SecretBytes(utf8: pin))
    }

    // MARK: - Handshakes

    static func runHandshakes(_ options: HandshakeOptions) throws {
        let store = try openStore(label: options.token)
        let identities = try options.thumbprints.map { try store.identity(thumbprint: $0) }

        var clients: [HTTPClient] = []
        var signatures = 0
        var heapAfterWarmUp: Int?
        for index in 0..<options.count {
            let identityIndex = index % identities.count
            if index % identityLifetime < identities.count {
                if clients.count > identityIndex {
                    signatures += clients[identityIndex].identity?.signatureCount ?? 0
                    clients[identityIndex] = try makeClient(store, identities[identityIndex])
                } else {
                    clients.append(try makeClient(store, identities[identityIndex]))
                }
            }
            try performRequest(clients[identityIndex], options, index: index)
            if index + 1 == warmUpRequests {
                heapAfterWarmUp = liveHeapBytes()
            }
        }
        let heapAtEnd = liveHeapBytes()
        signatures += clients.reduce(0) { $0 + ($1.identity?.signatureCount ?? 0) }
        clients.removeAll()

        guard signatures == options.count else {
            throw CheckFailure("the token made \(signatures) signatures for \(options.count) handshakes")
        }
        report("leakcheck: \(options.count) mutual-TLS handshakes, \(signatures) token signatures")
        try checkHeapGrowth(from: heapAfterWarmUp, to: heapAtEnd, requests: options.count - warmUpRequests)
    }

    static func makeClient(_ store: TokenStore, _ identity: Identity) throws -> HTTPClient {
        HTTPClient(identity: try ClientIdentity(store: store, identity: identity))
    }

    static func performRequest(_ client: HTTPClient, _ options: HandshakeOptions, index: Int) throws {
        var request = HTTPRequest(url: options.url)
        request.caFile = options.caFile
        request.useSystemRoots = false
        request.maximumTLS = (index / 2) % 2 == 0 ? .tls13 : .tls12
        let response = try client.perform(request)
        guard response.status == 200, response.header("X-Client-Verify") == "SUCCESS" else {
            throw CheckFailure(
                "request \(index + 1): HTTP \(response.status), X-Client-Verify \(response.header("X-Client-Verify") ?? "missing")"
            )
        }
    }

    /// Fails when the live heap grew by more than `maximumGrowthPerRequest` bytes per
    /// request after the warm-up. Without AddressSanitizer's allocator there is
    /// nothing to measure, and the check is skipped with a message.
    static func checkHeapGrowth(from start: Int?, to end: Int?, requests: Int) throws {
        guard let start, let end, requests > 0 else {
            report("leakcheck: live-heap growth not measured (needs AddressSanitizer and more than \(warmUpRequests) requests)")
            return
        }
        let growth = end - start
        let perRequest = Double(growth) / Double(requests)
        report(
            "leakcheck: live heap \(start) bytes after \(warmUpRequests) requests, \(end) bytes after \(requests) more: "
                + String(format: "%+.1f bytes per request", perRequest))
        guard perRequest <= Double(maximumGrowthPerRequest) else {
            throw CheckFailure(
                "the live heap grew by \(growth) bytes over \(requests) requests, more than \(maximumGrowthPerRequest) bytes per request: memory is kept per request"
            )
        }
    }

    /// Returns the bytes that the process has allocated and not freed, as AddressSanitizer's
    /// allocator counts them, or nil in a build without AddressSanitizer.
    static func liveHeapBytes() -> Int? {
        typealias Counter = @convention(c) () -> Int
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__sanitizer_get_current_allocated_bytes") else {
            return nil
        }
        return unsafeBitCast(symbol, to: Counter.self)()
    }

    // MARK: - Import

    static func runImports(_ options: ImportOptions) throws {
        let store = try openStore(label: options.token)
        let password = ProcessInfo.processInfo.environment["TOKENTLS_PFX_PASSWORD"].map { SecretBytes(utf8: $0) }
        var imported = 0
        var rejected = 0
        for path in options.files {
            let name = URL(fileURLWithPath: path).lastPathComponent
            let data = try Array(Data(contentsOf: URL(fileURLWithPath: path)))
            do {
                let contents: PFXContents
                do {
                    contents = try PFX.decode(data, password: nil, source: name)
                } catch let error as TokenStoreError where error.kind == .wrongPassword && password != nil {
                    contents = try PFX.decode(data, password: password, source: name)
                }
                let result = try store.importIdentity(contents, exportable: false)
                guard case .imported(let identity, _) = result else {
                    throw CheckFailure("\(name) was already in token \(options.token): start from an empty token")
                }
                try store.remove(identity)
                imported += 1
            } catch let error as TokenStoreError {
                report("leakcheck: \(name) rejected: \(error)")
                rejected += 1
            }
        }
        report("leakcheck: \(imported) PFX files imported and removed, \(rejected) rejected")
    }
}

/// Writes one line to standard output at once. LeakSanitizer ends a process that
/// leaks through `_exit`, which would drop lines that `print` still buffers.
func report(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

struct HandshakeOptions {
    var token = ""
    var url = ""
    var caFile = ""
    var count = 0
    var thumbprints: [String] = []

    init(_ arguments: [String]) throws {
        var remaining = arguments[...]
        while let argument = remaining.popFirst() {
            switch argument {
            case "--token", "--url", "--cacert", "--count":
                guard let value = remaining.popFirst() else {
                    throw UsageError("missing value for \(argument)")
                }
                switch argument {
                case "--token": token = value
                case "--url": url = value
                case "--cacert": caFile = value
                default:
                    guard let number = Int(value), number > 0 else {
                        throw UsageError("invalid --count \(value): pass a whole number, 1 or more")
                    }
                    count = number
                }
            default:
                thumbprints.append(argument)
            }
        }
        guard !token.isEmpty, !url.isEmpty, !caFile.isEmpty, count > 0, !thumbprints.isEmpty else {
            throw UsageError("handshakes needs --token, --url, --cacert, --count and at least one THUMBPRINT")
        }
    }
}

struct ImportOptions {
    var token = ""
    var files: [String] = []

    init(_ arguments: [String]) throws {
        var remaining = arguments[...]
        while let argument = remaining.popFirst() {
            if argument == "--token" {
                guard let value = remaining.popFirst() else {
                    throw UsageError("missing value for --token")
                }
                token = value
            } else {
                files.append(argument)
            }
        }
        guard !token.isEmpty, !files.isEmpty else {
            throw UsageError("import needs --token and at least one PFX FILE")
        }
    }
}

struct UsageError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = "usage error: " + description }
}

struct CheckFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
