import CCurl
import COpenSSL
import CShims
import Foundation
import Synchronization
import TokenStore

/// TLS protocol versions a request may be limited to.
public enum TLSVersion: String, Sendable, Comparable {
    case tls12 = "1.2"
    case tls13 = "1.3"

    public static func < (lhs: TLSVersion, rhs: TLSVersion) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// An HTTPS request, with the curl options TokenTLS supports.
public struct HTTPRequest: Sendable {
    public var url: String
    /// The method; nil means GET, or POST when a body is set.
    public var method: String?
    /// Header lines, "Name: value".
    public var headers: [String] = []
    public var body: [UInt8]?
    /// Extra trust anchors in a PEM file, added to the other anchors.
    public var caFile: String?
    /// Trust anchors from the root store, added to the system CA bundle.
    public var trustAnchors: [Certificate] = []
    /// False to trust only `trustAnchors` and `caFile`, without the system CA bundle.
    public var useSystemRoots = true
    /// Fixed address lines, "HOST:PORT:ADDRESS", as curl's --resolve takes them.
    public var resolve: [String] = []
    /// Seconds allowed to connect, and for the whole transfer.
    public var connectTimeout: Double?
    public var maxTime: Double?
    public var followRedirects = false
    public var minimumTLS: TLSVersion?
    public var maximumTLS: TLSVersion?
    /// Sends libcurl's own trace of the connection to standard error.
    public var verbose = false

    public init(url: String) {
        self.url = url
    }
}

/// A response: status, the raw header block and the body.
public struct HTTPResponse: Sendable {
    public let status: Int
    /// The header lines as received, including the status line, CRLF-separated.
    public let rawHeaders: [UInt8]
    public let body: [UInt8]
    /// The TLS version of the connection, such as "TLSv1.3".
    public let tlsVersion: String?

    /// Returns the value of the last header named `name` (case-insensitive).
    public func header(_ name: String) -> String? {
        var value: String?
        for line in String(decoding: rawHeaders, as: UTF8.self).components(separatedBy: "\r\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            if line[..<colon].lowercased() == name.lowercased() {
                value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        return value
    }
}

/// HTTPS through libcurl's OpenSSL backend, with the client identity installed into
/// each connection's `SSL_CTX` before the handshake.
///
/// A client may be used from several threads; each `perform` uses its own curl handle.
public final class HTTPClient: Sendable {
    public let identity: ClientIdentity?
    /// Chooses an identity when the server requests a certificate and `identity` is nil.
    public let selection: AutomaticSelection?

    private static let globalInitialization: CURLcode = curl_global_init(Int(CURL_GLOBAL_DEFAULT))

    public init(identity: ClientIdentity?) {
        self.identity = identity
        self.selection = nil
    }

    /// The identity automatic selection chose for the most recent request, if any.
    public var lastSelectedIdentity: ClientIdentity? { lastSelected.withLock { $0 } }
    private let lastSelected = Mutex<ClientIdentity?>(nil)
    private let certificateStores = CertificateStoreCache()

    /// Creates a client that picks its identity per connection from the CA names the server sends.
    public init(selection: AutomaticSelection) {
        self.identity = nil
        self.selection = selection
    }

    /// Sends `request` and returns the response. HTTP error statuses are responses, not errors.
    public func perform(_ request: HTTPRequest) throws -> HTTPResponse {
        guard HTTPClient.globalInitialization == CURLE_OK else {
            throw TLSError(.configuration, "libcurl failed to initialise")
        }
        guard request.url.lowercased().hasPrefix("https://") else {
            throw TLSError(
                .request, "invalid URL \"\(request.url)\": TokenTLS sends requests over HTTPS only; use an https:// URL")
        }
        if let identity, !identity.supportsTLS13, request.minimumTLS == .tls13 {
            throw TLSError(
                .configuration,
                "TLS 1.3 is impossible with \(identity.identity.thumbprint): its token cannot make RSA-PSS signatures, which TLS 1.3 requires; allow TLS 1.2"
            )
        }
        guard let handle = curl_easy_init() else {
            throw TLSError(.configuration, "libcurl could not create a request handle")
        }
        defer { curl_easy_cleanup(handle) }

        let transfer = Transfer(
            identity: identity, handle: handle, request: request, selection: selection, certificateStores: certificateStores)
        let transferPointer = Unmanaged.passRetained(transfer)
        defer { transferPointer.release() }
        let opaque = transferPointer.toOpaque()

        let lists = CurlLists()
        defer { lists.free() }
        let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
        defer { errorBuffer.deallocate() }

        var code = HTTPClient.setOptions(handle, request, transfer: opaque, errorBuffer: errorBuffer, lists: lists)
        if code == CURLE_OK {
            identity?.clearSigningError()
            OpenSSLErrorQueue.clear()
            code = curl_easy_perform(handle)
        }
        let curlMessage = String(cString: errorBuffer)

        if transfer.selectedIdentity != nil {
            lastSelected.withLock { $0 = transfer.selectedIdentity }
        }
        if let configurationError = transfer.configurationError {
            throw configurationError
        }
        guard code == CURLE_OK else {
            throw HTTPClient.describe(
                code, curlMessage: curlMessage, request: request, identity: identity ?? transfer.selectedIdentity,
                serverVerification: transfer.serverVerificationFailure)
        }
        var status = 0
        _ = tokentls_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        return HTTPResponse(status: status, rawHeaders: transfer.headers, body: transfer.body, tlsVersion: transfer.tlsVersion)
    }

    /// Applies `request` to a curl handle; returns the first failing option's code.
    private static func setOptions(
        _ handle: UnsafeMutableRawPointer, _ request: HTTPRequest, transfer: UnsafeMutableRawPointer,
        errorBuffer: UnsafeMutablePointer<CChar>, lists: CurlLists
    ) -> CURLcode {
        var results: [CURLcode] = []
        results.append(tokentls_curl_setopt_string(handle, CURLOPT_URL, request.url))
        results.append(tokentls_curl_setopt_string(handle, CURLOPT_PROTOCOLS_STR, "https"))
        results.append(tokentls_curl_setopt_string(handle, CURLOPT_REDIR_PROTOCOLS_STR, "https"))
        results.append(tokentls_curl_setopt_pointer(handle, CURLOPT_ERRORBUFFER, errorBuffer))
        results.append(tokentls_curl_setopt_long(handle, CURLOPT_NOSIGNAL, 1))
        results.append(tokentls_curl_setopt_write_function(handle, writeBody))
        results.append(tokentls_curl_setopt_pointer(handle, CURLOPT_WRITEDATA, transfer))
        results.append(tokentls_curl_setopt_header_function(handle, writeHeader))
        results.append(tokentls_curl_setopt_pointer(handle, CURLOPT_HEADERDATA, transfer))
        results.append(tokentls_curl_setopt_ssl_ctx_function(handle, configureSSLContext))
        results.append(tokentls_curl_setopt_pointer(handle, CURLOPT_SSL_CTX_DATA, transfer))
        results.append(tokentls_curl_setopt_long(handle, CURLOPT_VERBOSE, request.verbose ? 1 : 0))
        results.append(tokentls_curl_setopt_long(handle, CURLOPT_FOLLOWLOCATION, request.followRedirects ? 1 : 0))
        results.append(tokentls_curl_setopt_long(handle, CURLOPT_SSLVERSION, sslVersion(request)))
        // The trust anchors come from CertificateStoreCache, so libcurl loads no CA file of its own.
        results.append(tokentls_curl_setopt_pointer(handle, CURLOPT_CAINFO, nil))
        results.append(tokentls_curl_setopt_pointer(handle, CURLOPT_CAPATH, nil))
        if let connectTimeout = request.connectTimeout {
            results.append(tokentls_curl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, Int(connectTimeout * 1000)))
        }
        if let maxTime = request.maxTime {
            results.append(tokentls_curl_setopt_long(handle, CURLOPT_TIMEOUT_MS, Int(maxTime * 1000)))
        }
        for header in request.headers {
            lists.headers = curl_slist_append(lists.headers, header)
        }
        if let headers = lists.headers {
            results.append(tokentls_curl_setopt_pointer(handle, CURLOPT_HTTPHEADER, headers))
        }
        for entry in request.resolve {
            lists.resolve = curl_slist_append(lists.resolve, entry)
        }
        if let resolve = lists.resolve {
            results.append(tokentls_curl_setopt_pointer(handle, CURLOPT_RESOLVE, resolve))
        }
        if let body = request.body {
            results.append(tokentls_curl_setopt_off_t(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body.count)))
            let copied = body.withUnsafeBytes { bytes in
                tokentls_curl_setopt_pointer(handle, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: bytes.baseAddress))
            }
            results.append(copied)
        }
        if let method = request.method {
            results.append(tokentls_curl_setopt_string(handle, CURLOPT_CUSTOMREQUEST, method))
        }
        return results.first { $0 != CURLE_OK } ?? CURLE_OK
    }

    private static func sslVersion(_ request: HTTPRequest) -> Int {
        var value = Int(CURL_SSLVERSION_TLSv1_2)
        if request.minimumTLS == .tls13 {
            value = Int(CURL_SSLVERSION_TLSv1_3)
        }
        switch request.maximumTLS {
        case .tls12: value |= Int(CURL_SSLVERSION_MAX_TLSv1_2)
        case .tls13: value |= Int(CURL_SSLVERSION_MAX_TLSv1_3)
        case nil: value |= Int(CURL_SSLVERSION_MAX_DEFAULT)
        }
        return value
    }
}

/// The curl string lists of one transfer, freed after it.
final class CurlLists {
    var headers: UnsafeMutablePointer<curl_slist>?
    var resolve: UnsafeMutablePointer<curl_slist>?

    func free() {
        curl_slist_free_all(headers)
        curl_slist_free_all(resolve)
    }
}

/// The state one transfer's callbacks share. Used by one thread at a time: the one
/// running `curl_easy_perform`.
final class Transfer: @unchecked Sendable {
    let identity: ClientIdentity?
    let request: HTTPRequest
    let selection: AutomaticSelection?
    var selectedIdentity: ClientIdentity?
    /// The reason OpenSSL rejected the server's certificate, naming the certificate and its issuer.
    var serverVerificationFailure: String?
    var headers: [UInt8] = []
    var body: [UInt8] = []
    var configurationError: Error?
    var tlsVersion: String?
    let handle: UnsafeMutableRawPointer

    let certificateStores: CertificateStoreCache

    init(
        identity: ClientIdentity?, handle: UnsafeMutableRawPointer, request: HTTPRequest, selection: AutomaticSelection?,
        certificateStores: CertificateStoreCache
    ) {
        self.certificateStores = certificateStores
        self.identity = identity
        self.handle = handle
        self.request = request
        self.selection = selection
    }

    /// Reads the TLS version from the live connection; libcurl exposes it only during the transfer.
    func recordTLSVersion() {
        guard tlsVersion == nil else { return }
        var info: UnsafeMutableRawPointer?
        guard tokentls_curl_getinfo_pointer(handle, CURLINFO_TLS_SSL_PTR, &info) == CURLE_OK, let info else { return }
        let session = info.assumingMemoryBound(to: curl_tlssessioninfo.self).pointee
        guard session.backend == CURLSSLBACKEND_OPENSSL, let ssl = session.internals else { return }
        tlsVersion = String(cString: SSL_get_version(OpaquePointer(ssl)))
    }
}

private func writeBody(_ data: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ context: UnsafeMutableRawPointer?)
    -> Int
{
    guard let data, let context else { return 0 }
    let transfer = Unmanaged<Transfer>.fromOpaque(context).takeUnretainedValue()
    transfer.body.append(contentsOf: UnsafeRawBufferPointer(start: data, count: size * count))
    return size * count
}

private func writeHeader(_ data: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ context: UnsafeMutableRawPointer?)
    -> Int
{
    guard let data, let context else { return 0 }
    let transfer = Unmanaged<Transfer>.fromOpaque(context).takeUnretainedValue()
    let line = UnsafeRawBufferPointer(start: data, count: size * count)
    transfer.recordTLSVersion()
    // A new status line starts the headers of another response (a redirect or 100 Continue).
    if line.starts(with: Array("HTTP/".utf8)) {
        transfer.headers.removeAll()
    }
    transfer.headers.append(contentsOf: line)
    return size * count
}

private func configureSSLContext(
    _ handle: UnsafeMutableRawPointer?, _ sslContext: UnsafeMutableRawPointer?, _ context: UnsafeMutableRawPointer?
) -> CURLcode {
    guard let sslContext, let context else { return CURLE_SSL_CERTPROBLEM }
    let transfer = Unmanaged<Transfer>.fromOpaque(context).takeUnretainedValue()
    let ctx = OpaquePointer(sslContext)
    do {
        try installTrust(ctx, transfer: transfer)
        if let identity = transfer.identity {
            try identity.configure(sslContext: ctx)
        } else if transfer.selection != nil {
            SSL_CTX_set_cert_cb(ctx, selectCertificate, context)
        }
        return CURLE_OK
    } catch {
        transfer.configurationError = error
        return CURLE_SSL_CERTPROBLEM
    }
}

/// Sets the anchors for the server's certificate (the system bundle unless
/// `useSystemRoots` is false, the root store, and `caFile`) and records why a
/// server certificate fails verification.
private func installTrust(_ ctx: OpaquePointer, transfer: Transfer) throws {
    try transfer.certificateStores.install(into: ctx, for: transfer.request)
    let index = tokentls_ssl_ctx_ex_index()
    guard index >= 0, SSL_CTX_set_ex_data(ctx, index, Unmanaged.passUnretained(transfer).toOpaque()) == 1 else {
        throw TLSError(.configuration, "attaching the transfer state to the TLS context failed")
    }
    SSL_CTX_set_verify(ctx, SSL_CTX_get_verify_mode(ctx), recordServerVerification)
}

/// Keeps OpenSSL's verdict on the server's certificate and notes why it failed.
private func recordServerVerification(_ ok: Int32, _ storeContext: OpaquePointer?) -> Int32 {
    guard ok == 0, let storeContext,
        let ssl = X509_STORE_CTX_get_ex_data(storeContext, SSL_get_ex_data_X509_STORE_CTX_idx()),
        let ctx = SSL_get_SSL_CTX(OpaquePointer(ssl)),
        let pointer = SSL_CTX_get_ex_data(ctx, tokentls_ssl_ctx_ex_index())
    else {
        return ok
    }
    let transfer = Unmanaged<Transfer>.fromOpaque(pointer).takeUnretainedValue()
    if transfer.serverVerificationFailure == nil {
        let code = X509_STORE_CTX_get_error(storeContext)
        let certificate = X509_STORE_CTX_get_current_cert(storeContext)
        let subject = certificate.map { Certificate.subjectString($0) } ?? "the server certificate"
        let issuer = certificate.map { Certificate.issuerString($0) } ?? "its issuer"
        let reason = String(cString: X509_verify_cert_error_string(Int(code)))
        switch code {
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
            X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN,
            X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
            transfer.serverVerificationFailure =
                "\(subject) is issued by \(issuer), which is not trusted (\(reason)); add that CA with 'tokentls trust add FILE' or --cacert FILE"
        default:
            transfer.serverVerificationFailure = "\(subject): \(reason)"
        }
    }
    return ok
}

/// Chooses a client identity when the server requests a certificate (see `AutomaticSelection`).
private func selectCertificate(_ ssl: OpaquePointer?, _ context: UnsafeMutableRawPointer?) -> Int32 {
    guard let ssl, let context else { return 1 }
    let transfer = Unmanaged<Transfer>.fromOpaque(context).takeUnretainedValue()
    guard let selection = transfer.selection else { return 1 }
    do {
        let request = CertificateRequestInfo(ssl: ssl)
        if let identity = try selection.choose(for: request) {
            try identity.configure(ssl: ssl)
            transfer.selectedIdentity = identity
        }
        return 1
    } catch {
        transfer.configurationError = error
        return 0
    }
}
