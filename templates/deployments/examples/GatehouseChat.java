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
        HttpResponse<String> response = HttpClient.newHttpClient().send(request, HttpResponse.BodyHandlers.ofString());

        System.out.println(response.body());
        if (response.statusCode() != 200) {
            System.exit(1);
        }
    }
}
