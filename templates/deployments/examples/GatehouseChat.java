import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class GatehouseChat {
    public static void main(String[] args) throws Exception {
        String apiKey = {{ key }};
{% if from_env %}        if (apiKey == null || apiKey.isEmpty()) {
            System.err.println("Set the {{ env }} environment variable to your Gatehouse API key.");
            System.exit(1);
        }
{% endif %}
        String body = {{ body }};

        HttpRequest request = HttpRequest.newBuilder(URI.create({{ chat_url }}))
                .header("Authorization", "Bearer " + apiKey)
                .header("Content-Type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString(body))
                .build();
        // HTTP/1.1: Java's default cleartext HTTP/2 upgrade (h2c) is refused by most servers.
        HttpClient client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();
        HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());

        System.out.println(response.body());
        if (response.statusCode() != 200) {
            System.exit(1);
        }
    }
}
