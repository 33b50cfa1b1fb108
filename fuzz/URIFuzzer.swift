import PKCS11
import TokenStore

/// libFuzzer entry point for the PKCS#11 URI parser and the hexadecimal parser.
///
/// The input, read as UTF-8 (invalid bytes become U+FFFD), goes through
/// `PKCS11URI(parsing:)`. When it parses, the URI's `description` must parse to an
/// equal value. The same text goes through `bytes(fromHex:)`, whose result must turn
/// back into the same digits through `hexString`.
///
/// A finding is a crash, a sanitizer report, a failed round trip, or an error of a
/// type other than `PKCS11Error`.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzURI(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size > 0 && data != nil ? Array(UnsafeBufferPointer(start: data, count: size)) : []
    let text = String(decoding: bytes, as: UTF8.self)

    checkURIRoundTrip(text)
    checkHex(text)
    return 0
}

private func checkURIRoundTrip(_ text: String) {
    let parsed: PKCS11URI
    do {
        parsed = try PKCS11URI(parsing: text)
    } catch {
        requireURIError(error)
        return
    }
    _ = parsed.tokenSelector

    let printed = parsed.description
    let reparsed: PKCS11URI
    do {
        reparsed = try PKCS11URI(parsing: printed)
    } catch {
        fatalError(
            "round trip failed: \(debugQuoted(text)) parsed, but its description \(debugQuoted(printed)) did not: \(error)")
    }
    guard reparsed == parsed else {
        fatalError(
            "round trip changed the URI: \(debugQuoted(text)) parsed to \(fields(parsed)), its description \(debugQuoted(printed)) to \(fields(reparsed))"
        )
    }
}

private func checkHex(_ text: String) {
    guard let decoded = bytes(fromHex: text) else {
        return
    }
    let digits = text.unicodeScalars.filter { $0.properties.isASCIIHexDigit }
    precondition(decoded.count * 2 == digits.count, "bytes(fromHex:) returned \(decoded.count) bytes for \(digits.count) digits")
    precondition(
        hexString(decoded) == String(String.UnicodeScalarView(digits)).uppercased(),
        "bytes(fromHex:) changed the digits of \(debugQuoted(text))")
}

private func requireURIError(_ error: any Error) {
    guard let uriError = error as? PKCS11Error, uriError.kind == .invalidURI else {
        fatalError("PKCS11URI(parsing:) threw \(error) (\(type(of: error))), expected PKCS11Error of kind invalidURI")
    }
}

private func debugQuoted(_ text: String) -> String {
    String(reflecting: text)
}

private func fields(_ uri: PKCS11URI) -> String {
    String(reflecting: uri)
}
