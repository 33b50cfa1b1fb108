import COpenSSL
import Foundation
import PKCS11
import TokenStore
import TokenTLS

/// The command-line options.
struct Options {
    var quick = false
    var rounds: Int?
    var workFolder: String?
    var scriptsFolder: String?
    var sections: Set<String> = Set(Options.allSections)
    var profile: String?
    var profileCount = 1000
    var profileIdentities = 100
    var fullSelection = false
    var revision: String?

    static let allSections = ["signing", "handshakes", "concurrency", "scale", "memory"]

    static let usage = """
        Usage: tokentls-bench [--quick] [--rounds N] [--full-selection] [--sections LIST] [--scripts DIR] [--work-dir DIR]
               tokentls-bench --profile OPERATION [--count N] [--identities N] [--scripts DIR]

        Measures TokenTLS against OpenSSL with in-memory keys and prints Markdown tables.
        scripts/bench builds it in release mode and runs it.

          --quick          3 short rounds, 50 identities at most, 1,000 handshakes for memory
          --rounds N       rounds per comparison (default 11, or 3 with --quick)
          --full-selection also measure automatic selection with 1,000 identities (several minutes)
          --sections LIST  comma-separated subset of: \(allSections.joined(separator: ","))
          --scripts DIR    folder with make-certs and test-server (default: the package's scripts/)
          --work-dir DIR   keep certificates, tokens and nginx logs in DIR instead of a removed
                           temporary folder
          --revision TEXT  the source revision to print in the header
          --profile OP     run OP --count times with no timing, for valgrind --tool=callgrind;
                           OP is one of: \(ProfileOperation.allCases.map(\.rawValue).joined(separator: ", "))
          --count N        operations for --profile (default 1000)
          --identities N   identities in the token for --profile list and selection (default 100)
        """

    /// The options that change what is measured, as they would be typed.
    var measurementOptions: String {
        var parts: [String] = []
        if quick { parts.append("--quick") }
        if let rounds { parts.append("--rounds \(rounds)") }
        if fullSelection { parts.append("--full-selection") }
        if sections != Set(Options.allSections) {
            parts.append("--sections " + Options.allSections.filter(sections.contains).joined(separator: ","))
        }
        return parts.isEmpty ? "none" : parts.joined(separator: " ")
    }

    static func parse(_ arguments: [String]) throws -> Options {
        var options = Options()
        var remaining = arguments[...]
        func value(_ option: String) throws -> String {
            guard let next = remaining.popFirst() else {
                throw BenchFailure("missing value for \(option)\n\n\(usage)")
            }
            return next
        }
        func number(_ option: String) throws -> Int {
            let text = try value(option)
            guard let number = Int(text), number > 0 else {
                throw BenchFailure("invalid \(option) \"\(text)\": expected a positive whole number")
            }
            return number
        }
        while let argument = remaining.popFirst() {
            switch argument {
            case "--quick": options.quick = true
            case "--full-selection": options.fullSelection = true
            case "--rounds": options.rounds = try number(argument)
            case "--work-dir": options.workFolder = try value(argument)
            case "--revision": options.revision = try value(argument)
            case "--scripts": options.scriptsFolder = try value(argument)
            case "--count": options.profileCount = try number(argument)
            case "--identities": options.profileIdentities = try number(argument)
            case "--profile":
                let name = try value(argument)
                guard ProfileOperation(rawValue: name) != nil else {
                    throw BenchFailure(
                        "unknown --profile operation \"\(name)\". Use one of: \(ProfileOperation.allCases.map(\.rawValue).joined(separator: ", "))"
                    )
                }
                options.profile = name
            case "--sections":
                let names = try value(argument).split(separator: ",").map(String.init)
                for name in names where !allSections.contains(name) {
                    throw BenchFailure(
                        "unknown section \"\(name)\" in --sections. Use one of: \(allSections.joined(separator: ","))")
                }
                options.sections = Set(names)
            case "-h", "--help":
                print(usage)
                exit(0)
            default:
                throw BenchFailure("unknown argument \"\(argument)\"\n\n\(usage)")
            }
        }
        return options
    }
}

/// A token identity together with the PEM files of the same certificate and key.
struct BenchIdentity {
    let identity: ClientIdentity
    let certificateFile: String
    let keyFile: String
    /// The key read from `keyFile`, for signing in memory.
    let memoryKey: OpaquePointer
    /// The certificate's public key, for checking signatures.
    let publicKey: OpaquePointer
    /// The same certificate, CA certificates and signature algorithms with `memoryKey`.
    let memoryIdentity: MemoryIdentity

    var keyObject: ObjectHandle { identity.identity.privateKeyObject! }
}

/// The source of a client's private key.
enum KeyPlace {
    /// The PEM file, which libcurl reads for every connection.
    case file
    /// The same key, read once and installed like the token key.
    case memory
    /// The token, through `ClientIdentity`.
    case token
}

/// The state every section shares: the environment, the main token with an RSA-2048
/// and a P-256 identity, the nginx server, the schedule and the report.
final class Bench {
    let options: Options
    let environment: BenchEnvironment
    let report = Report()
    let store: TokenStore
    let rsa: BenchIdentity
    let ec: BenchIdentity
    let server: NginxServer

    /// The schedule of the signing comparisons.
    let signingSchedule: Schedule
    /// The schedule of the handshake and request comparisons.
    let networkSchedule: Schedule

    init(options: Options, environment: BenchEnvironment) throws {
        self.options = options
        self.environment = environment
        let rounds = options.rounds ?? (options.quick ? 3 : 11)
        signingSchedule =
            options.quick
            ? Schedule(rounds: rounds, seconds: 0.15, warmUpSeconds: 0.05)
            : Schedule(rounds: rounds, seconds: 0.4, warmUpSeconds: 0.2)
        networkSchedule =
            options.quick
            ? Schedule(rounds: rounds, seconds: 0.3, warmUpSeconds: 0.1)
            : Schedule(rounds: rounds, seconds: 0.6, warmUpSeconds: 0.3)

        progress("setting up the token")
        store = try environment.makeToken(label: "bench")
        rsa = try Bench.importIdentity(environment, store, pfx: "client.pfx", certificate: "client.crt", key: "client.key")
        ec = try Bench.importIdentity(
            environment, store, pfx: "client-ec256.pfx", certificate: "client-ec256.crt", key: "client-ec256.key")
        progress("starting nginx")
        server = try environment.startServer(name: "nginx")
    }

    private static func importIdentity(
        _ environment: BenchEnvironment, _ store: TokenStore, pfx: String, certificate: String, key: String
    ) throws -> BenchIdentity {
        let imported = try store.importIdentity(environment.pfx(pfx), exportable: false).identity
        let certificateFile = environment.certificate(certificate)
        let keyFile = environment.certificate(key)
        let x509 = try readCertificate(certificateFile)
        defer { X509_free(x509) }
        guard let publicKey = X509_get_pubkey(x509) else {
            throw BenchFailure("\(certificateFile) has no public key")
        }
        let identity = try ClientIdentity(store: store, identity: imported)
        let memoryKey = try readPrivateKey(keyFile)
        let memoryIdentity = try MemoryIdentity(
            certificateFile: certificateFile, key: memoryKey, chain: store.authorityChain(for: imported.certificate),
            signatureAlgorithms: identity.signatureAlgorithms)
        return BenchIdentity(
            identity: identity, certificateFile: certificateFile, keyFile: keyFile, memoryKey: memoryKey, publicKey: publicKey,
            memoryIdentity: memoryIdentity)
    }

    var serverCA: String { environment.certificate("server-ca.crt") }

    /// Makes a libcurl client of the mTLS port of `server` (default: the main server)
    /// with the private key of `identity` in `place`.
    func curlClient(_ identity: BenchIdentity, _ place: KeyPlace, policy: ConnectionPolicy, server: NginxServer? = nil) throws
        -> CurlClient
    {
        let credential: ClientCredential =
            switch place {
            case .file: .keyFile(certificate: identity.certificateFile, key: identity.keyFile)
            case .memory: .memoryKey(identity.memoryIdentity)
            case .token: .token(identity.identity)
            }
        return try CurlClient(url: (server ?? self.server).mtlsURL, caFile: serverCA, credential: credential, policy: policy)
    }

    /// An `HTTPRequest` for the main server's mTLS port that trusts the server's CA.
    var mtlsRequest: HTTPRequest {
        var request = HTTPRequest(url: server.mtlsURL)
        request.caFile = serverCA
        return request
    }
}

/// Sends `request` with `client` and checks that the response status is 200.
func performChecked(_ client: HTTPClient, _ request: HTTPRequest) throws {
    let response = try client.perform(request)
    guard response.status == 200 else {
        throw BenchFailure("GET \(request.url) through HTTPClient returned HTTP status \(response.status), expected 200")
    }
}
