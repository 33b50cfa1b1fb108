import PKCS11
import Testing

/// Inputs that the uri target of scripts/fuzz found: URIs that parsed, but whose
/// `description` did not parse back to an equal value.
@Suite("PKCS#11 URI fuzz findings")
struct URIFuzzFindingTests {
    @Test("pin-source survives the round trip")
    func pinSourceRoundTrip() throws {
        let uri = try PKCS11URI(parsing: "pkcs11:token=t;object=key?pin-source=file:/run/tokentls/pin")
        #expect(uri.pinSource == "file:/run/tokentls/pin")

        let reparsed = try PKCS11URI(parsing: uri.description)
        #expect(reparsed == uri)
    }

    @Test("ampersand in query values is encoded")
    func ampersandInQuery() throws {
        // The fuzzer's input: p11-kit reads pin-source from the path too, and the
        // C string ends at the first NUL.
        let found = try PKCS11URI(parsing: "pkcs11:token=1Oection;pin-source=:CE:&t?module-path=1=\0\0\0\0\0+\0\0")
        #expect(found.pinSource == ":CE:&t")
        #expect(found.modulePath == "1=")
        #expect(try PKCS11URI(parsing: found.description) == found)

        let uri = try PKCS11URI(parsing: "pkcs11:token=a%26b?module-path=/opt/x%26y.so&pin-source=file:/p%26q")
        #expect(uri.token == "a&b")
        #expect(uri.modulePath == "/opt/x&y.so")
        #expect(uri.pinSource == "file:/p&q")
        #expect(uri.description == "pkcs11:token=a&b?module-path=%2fopt%2fx%26y.so&pin-source=file:%2fp%26q")
        #expect(try PKCS11URI(parsing: uri.description) == uri)
    }

    @Test(
        "invalid UTF-8 in a label is rejected",
        arguments: [
            // The fuzzer's input: the serial's 0xff byte became U+FFFD, whose three
            // UTF-8 bytes made the printed serial longer than the 16-byte field.
            "pkcs11:token=My%2en;serial=3\u{FFFD}4bid=%02%01502%ff;type=private",
            "pkcs11:token=%ff",
            "pkcs11:manufacturer=%c3",
            "pkcs11:model=a%80b",
            "pkcs11:object=%ed%a0%80",
        ])
    func invalidUTF8Rejected(_ text: String) {
        let error = #expect(throws: PKCS11Error.self) {
            try PKCS11URI(parsing: text)
        }
        #expect(error?.kind == .invalidURI)
        #expect(error?.description.contains("not valid UTF-8") == true)
    }

    @Test("valid UTF-8 labels still parse")
    func validUTF8Accepted() throws {
        let uri = try PKCS11URI(parsing: "pkcs11:token=%d0%ba%d0%bb%d1%8e%d1%87;object=%e2%82%ac")
        #expect(uri.token == "ключ")
        #expect(uri.object == "€")
        #expect(try PKCS11URI(parsing: uri.description) == uri)
    }
}
