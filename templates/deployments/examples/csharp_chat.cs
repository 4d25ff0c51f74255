using System;
using System.Net.Http;
using System.Net.Http.Headers;
using System.Text;
using System.Threading.Tasks;

class Program
{
    static int Main() => RunAsync().GetAwaiter().GetResult();

    static async Task<int> RunAsync()
    {
        string apiKey = {{ key }};
{% if from_env %}        if (string.IsNullOrEmpty(apiKey))
        {
            Console.Error.WriteLine("Set the {{ env }} environment variable to your Gatehouse API key.");
            return 1;
        }
{% endif %}
        string body = {{ body }};

        using (var client = new HttpClient())
        using (var request = new HttpRequestMessage(HttpMethod.Post, {{ chat_url }}))
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
            request.Content = new StringContent(body, Encoding.UTF8, "application/json");
            HttpResponseMessage response = await client.SendAsync(request);
            Console.WriteLine(await response.Content.ReadAsStringAsync());
            return response.IsSuccessStatusCode ? 0 : 1;
        }
    }
}
