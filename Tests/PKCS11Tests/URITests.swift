import PKCS11
import Testing

@Suite("PKCS#11 URI")
struct URITests {
    @Test("token and object attributes")
    func parsesAttributes() throws {
        let uri = try PKCS11URI(parsing: "pkcs11:token=My%20Token;serial=3f4b;object=client;id=%01%02%ff;type=private")
        #expect(uri.token == "My Token")
        #expect(uri.serial == "3f4b")
        #expect(uri.object == "client")
        #expect(uri.id == [0x01, 0x02, 0xff])
        #expect(uri.type == .privateKey)
        #expect(uri.manufacturer == nil)
        #expect(uri.tokenSelector == TokenSelector(label: "My Token", serial: "3f4b"))
    }

    @Test("module path in the query")
    func parsesModulePath() throws {
        let uri = try PKCS11URI(parsing: "pkcs11:token=t?module-path=/usr/lib/softhsm/libsofthsm2.so")
        #expect(uri.modulePath == "/usr/lib/softhsm/libsofthsm2.so")
    }

    @Test("round trip through description")
    func roundTrip() throws {
        let original = PKCS11URI(token: "a;b c", serial: "01", object: "ключ", id: [0x00, 0xAB], type: .certificate)
        let reparsed = try PKCS11URI(parsing: original.description)
        #expect(reparsed == original)
    }

    @Test("pin-value is rejected")
    func rejectsPinValue() {
        let error = #expect(throws: PKCS11Error.self) {
            try PKCS11URI(parsing: "pkcs11:token=t?pin-value=1234")
        }
        #expect(error?.kind == .invalidURI)
        #expect(error?.description.contains("1234") == false)
    }

    @Test("malformed URIs", arguments: ["pkcs11:token=%zz", "https://example.invalid/", "pkcs11:type=wrong", ""])
    func rejectsMalformed(_ text: String) {
        let error = #expect(throws: PKCS11Error.self) {
            try PKCS11URI(parsing: text)
        }
        #expect(error?.kind == .invalidURI)
        #expect(error?.description.contains("invalid PKCS#11 URI") == true)
    }
}

@Suite("PKCS#11 errors")
struct ErrorTests {
    @Test("names of return values")
    func names() {
        #expect(PKCS11Error.name(ofReturnValue: 0xa0) == "CKR_PIN_INCORRECT")
        #expect(PKCS11Error.name(ofReturnValue: 0x11) == "CKR_ATTRIBUTE_SENSITIVE")
        #expect(PKCS11Error.name(ofReturnValue: 0x8000_0012) == "CKR_VENDOR_DEFINED+0x12")
    }

    @Test("message names code, function and object")
    func message() {
        let error = PKCS11Error.call("C_Sign", 0x6a, context: "key \"client\"")
        #expect(error.description == "C_Sign failed: CKR_KEY_UNEXTRACTABLE (0x6a) for key \"client\"")
    }

    @Test("equality compares the code only")
    func equality() {
        #expect(PKCS11Error.call("C_Sign", 0xa0) == PKCS11Error.call("C_Login", 0xa0, context: "other"))
        #expect(PKCS11Error.call("C_Sign", 0xa0) != PKCS11Error.call("C_Sign", 0xa1))
    }
}
